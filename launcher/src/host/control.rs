//! The host's commands: what a front end (the menu's keys, a GUI or script over
//! `--control stdin`) asks a running share to do. One small API: send a [`HostCommand`] on the
//! channel, watch the events for the result (a `viewer-left` with reason `kicked`, a new
//! `ticket`, `ended`).

use std::io::BufRead as _;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::events::{Event, Events};

/// A command to a running host. On `--control stdin`, one JSON object per line:
/// `{"cmd":"kick","id":"…"}`, `{"cmd":"revoke"}`, `{"cmd":"stop"}` (other fields are ignored, so
/// a newer front end can add some).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum HostCommand {
    /// End this viewer's connection (its `viewer-joined` id); it is told it was kicked.
    Kick { id: String },
    /// A new ticket: the old one stops working and every viewer is disconnected.
    Revoke,
    /// End the share, as ctrl-c does.
    Stop,
}

/// The sending half, for front ends.
pub type Commander = mpsc::UnboundedSender<HostCommand>;
/// The receiving half, for the host.
pub type Commands = mpsc::UnboundedReceiver<HostCommand>;

/// A new command channel.
pub fn channel() -> (Commander, Commands) {
    mpsc::unbounded_channel()
}

/// Reads JSON-line commands from stdin until it ends; its end stops the host (a front end that
/// goes away takes its share with it). A bad line is a warning event, not the end.
pub fn read_stdin(commands: Commander, events: std::sync::Arc<Events>) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        match parse(&line) {
            Ok(cmd) => {
                if commands.send(cmd).is_err() {
                    return;
                }
            }
            Err(message) => events.emit(Event::Warning { message }),
        }
    }
    let _ = commands.send(HostCommand::Stop);
}

/// One control line.
pub fn parse(line: &str) -> Result<HostCommand, String> {
    serde_json::from_str(line).map_err(|e| {
        format!(r#"control: not a command ({e}): {line}; send {{"cmd":"kick","id":"…"}}, {{"cmd":"revoke"}} or {{"cmd":"stop"}}"#)
    })
}

/// What a command does to the serve pipeline's irohsink; Err is a message for people.
pub(super) fn apply(sink: &gst::Element, cmd: &HostCommand) -> Result<(), String> {
    use gst::prelude::*;
    match cmd {
        HostCommand::Kick { id } => {
            if sink.emit_by_name::<bool>("kick", &[id]) {
                Ok(())
            } else {
                Err(format!("no viewer {id} to kick"))
            }
        }
        // The new ticket comes as an `iroh-ticket` message, so it is announced like the first.
        HostCommand::Revoke => match sink.emit_by_name::<Option<String>>("revoke", &[]) {
            Some(_) => Ok(()),
            None => Err("the ticket cannot be revoked before the endpoint is up".into()),
        },
        HostCommand::Stop => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_parse_into_commands() {
        assert_eq!(
            parse(r#"{"cmd":"kick","id":"ab-1"}"#),
            Ok(HostCommand::Kick { id: "ab-1".into() })
        );
        assert_eq!(parse(r#"{"cmd":"revoke"}"#), Ok(HostCommand::Revoke));
        assert_eq!(parse(r#" {"cmd":"stop"} "#), Ok(HostCommand::Stop));
        assert_eq!(parse(r#"{"cmd":"stop","why":"closed"}"#), Ok(HostCommand::Stop));
        for bad in [r#"{"cmd":"kick"}"#, r#"{"cmd":"dance"}"#, "stop", r#"{"id":"a"}"#] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("not a command") && e.contains(r#"{"cmd":"revoke"}"#), "{e}");
        }
    }
}
