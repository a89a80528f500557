//! Wayland capture through the ScreenCast portal: not built yet.

use anyhow::Result;

use super::Plan;
use crate::cli::HostArgs;

/// Wayland capture needs the ScreenCast portal, which this build does not have yet.
pub fn plan(_args: &HostArgs) -> Result<Plan> {
    Err(anyhow::anyhow!(
        "Wayland capture (the ScreenCast portal) is not available in this version yet: \
         share an X11 session, or force X11 with --display-server x11 if an Xwayland DISPLAY is set"
    ))
}
