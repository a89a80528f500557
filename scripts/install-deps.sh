#!/usr/bin/env bash
# Installs the Debian 12 packages pixelpass needs to build, run and test. Idempotent: does
# nothing when everything is already there.
set -euo pipefail

PKGS=(
  # build
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  # GStreamer runtime: capture, encode, mux, decode, tools
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x gstreamer1.0-pipewire
  # X11 capture and its tests
  xvfb x11-utils x11-xserver-utils x11-apps xdotool
  # audio: PipeWire + WirePlumber + pipewire-pulse, pactl, a session bus
  pipewire pipewire-pulse wireplumber pulseaudio-utils dbus
  # players and stream checks
  mpv ffmpeg vlc-bin vlc-plugin-base
  # test helpers
  python3 procps iproute2 curl iptables tcpdump
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
