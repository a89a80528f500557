//! Wording shared by the messages people read.

/// "a, b", or "none".
pub fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
