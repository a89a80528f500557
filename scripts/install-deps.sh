#!/usr/bin/env bash
# Installs the Debian 12 packages pixelpass needs to build, run and test. Idempotent: does
# nothing when everything is already there.
set -euo pipefail

PKGS=(
  # build (libpipewire + libclang: the pipewire crate's bindings)
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libpipewire-0.3-dev libclang-dev
  # GStreamer runtime: capture, encode, mux, decode, tools (gst-play-1.0: the URI test)
  gstreamer1.0-tools gstreamer1.0-plugins-base-apps gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x gstreamer1.0-pipewire
  # X11 capture and its tests
  xvfb x11-utils x11-xserver-utils x11-apps xdotool
  # audio: PipeWire + WirePlumber + pipewire-pulse, pactl, a session bus
  pipewire pipewire-pulse wireplumber pulseaudio-utils dbus
  # Wayland capture tests: headless sway, the ScreenCast portal, gdbus; the portal backend is
  # rebuilt by scripts/build-xdpw.sh (the packaged one cannot cast without a GPU)
  sway xdg-desktop-portal xdg-desktop-portal-wlr libglib2.0-bin util-linux
  # players and stream checks
  mpv ffmpeg vlc-bin vlc-plugin-base
  # test helpers (python3-gi + the GStreamer typelib: the Python error-code test)
  python3 python3-gi gir1.2-gstreamer-1.0 procps iproute2 curl iptables tcpdump
  # the menu's tests: a terminal to drive, the X11 and Wayland clipboards to read
  tmux xclip wl-clipboard
  # the pixelpass:// desktop handler test (xdg-mime)
  xdg-utils
  # host --publish tests: nginx with Debian's RTMP module, and an SRT listener
  nginx libnginx-mod-rtmp srt-tools
  # the window (--features gui): software OpenGL for Xvfb, a tray watcher and a notification
  # daemon for its tests (dbus-monitor, gdbus, xdotool, ffmpeg are above)
  libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 haskell-status-notifier-item-utils dunst
  # the browser viewer: its wasm build (ring's C code needs clang with a wasm backend, and
  # llvm-ar-16 from llvm-16 to archive it: .cargo/config.toml names both) and its test in
  # headless Chromium
  clang-16 lld-16 llvm-16 chromium
)

# The browser viewer's Rust tools: the wasm32 target, and the wasm-bindgen CLI of exactly the
# version in Cargo.lock (another version refuses the module). Built once, then kept in
# ~/.cargo/bin.
web_tools() {
  local root want have
  root=$(cd "$(dirname "$0")/.." && pwd)
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
  fi
  want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
  have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
  # not --locked: its lock pins a webpki-roots some registry mirrors lack
  [ "$want" = "$have" ] || cargo install wasm-bindgen-cli --version "$want" --quiet
}

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  web_tools
  bash "$(dirname "$0")/build-xdpw.sh"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
# Packages with services (nginx, dunst's D-Bus activation aside) must not start them: the tests
# run their own copies on ephemeral ports. A policy-rc.d of our own, only if none exists.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
web_tools
bash "$(dirname "$0")/build-xdpw.sh"
