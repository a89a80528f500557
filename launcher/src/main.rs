//! pixelpass: share your screen P2P over iroh.

use clap::Parser;

/// P2P screen sharing for Linux over iroh: the host gets a ticket, the viewer pastes it.
#[derive(Debug, Parser)]
#[command(name = "pixelpass", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("pixelpass: the launcher is not built yet; use the gst-iroh elements (see README)");
    std::process::exit(1);
}
