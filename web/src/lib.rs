//! The browser viewer of a pixelpass share: the wasm module behind the static page in
//! `web/www` (built by `scripts/build-web.sh`).
//!
//! The module dials the host through the relay named in the ticket (browsers reach iroh
//! endpoints only through a relay), says hello with the ticket's secret, reads the GOP
//! streams in order, demuxes MPEG-TS and hands the page H.264 access units and AAC frames
//! for WebCodecs; it reports progress like the native viewer, so the host skips and switches
//! renditions for it. The page (`www/viewer.js`) decodes, draws and plays.
//!
//! Natively this crate is its pure parts ([`demux`], [`codec`], [`messages`]), unit-tested in
//! the workspace's native build; the viewer ([`viewer`]) exists in the wasm32 build only.

pub mod codec;
pub mod demux;
pub mod messages;

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
pub mod viewer;
