//! The host's commands: what a front end (the menu's keys, later a GUI over `--control`) asks
//! a running share to do. One small API: send a [`HostCommand`] on the channel, watch the
//! events for the result (a `viewer-left` with reason `kicked`, a new `ticket`, `ended`).

use tokio::sync::mpsc;

/// A command to a running host.
#[derive(Debug, Clone, PartialEq, Eq)]
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
