#!/usr/bin/env bash
# Builds the xdg-desktop-portal-wlr 0.7.0 the Wayland tests run against: Debian's own source
# with two fixes, installed as $OUT/xdg-desktop-portal-wlr (default target/xdpw).
#
# Why: on a machine without a GPU, sway/wlroots 0.15 (pixman renderer) offers screencopy v3
# frames in SHM only, and stock xdpw 0.7.0 then refuses to start any screencast ("unable to
# receive a valid format from wlr_screencopy", upstream emersion/xdg-desktop-portal-wlr#289).
# Fix 1 accepts an SHM-only format. Fix 2: closing a session while a consumer streams makes
# stock xdpw free the cast target before its PipeWire stream is destroyed, and the last
# enqueued buffer then reads freed memory (a crash seen on this machine kind); we free it after.
# Real desktops with a GPU do not need this build; pixelpass itself runs with any portal.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/xdpw}
BIN=$OUT/xdg-desktop-portal-wlr
[ -x "$BIN" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  # a deb-src twin of the machine's own Debian sources (same mirror and suites)
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    | $SUDO tee /etc/apt/sources.list.d/pixelpass-deb-src.sources >/dev/null
  $SUDO apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  dpkg-dev meson ninja-build pkg-config libdrm-dev libinih-dev libgbm-dev libpipewire-0.3-dev \
  libwayland-dev wayland-protocols libsystemd-dev >/dev/null

WORK=$OUT/src
rm -rf "$WORK" && mkdir -p "$WORK"
(cd "$WORK" && apt-get source -qq xdg-desktop-portal-wlr=0.7.0-1 >/dev/null 2>&1)
SRC=$WORK/xdg-desktop-portal-wlr-0.7.0
python3 - "$SRC/src/screencast/screencast.c" <<'PY'
import sys
path = sys.argv[1]
c = open(path).read()
# fix 1: an SHM format is enough; do not insist on DMA-BUF for screencopy v3
old = """	if (cast->screencopy_frame_info[WL_SHM].format == DRM_FORMAT_INVALID ||
			(cast->ctx->state->screencast_version >= 3 &&
			 cast->screencopy_frame_info[DMABUF].format == DRM_FORMAT_INVALID)) {"""
assert old in c, "unexpected xdpw source (format check)"
c = c.replace(old, "	if (cast->screencopy_frame_info[WL_SHM].format == DRM_FORMAT_INVALID) {")
# fix 2: free the target only once the PipeWire stream is gone
old = """	free(cast->target);
	wl_list_remove(&cast->link);
	xdpw_pwr_stream_destroy(cast);
"""
assert old in c, "unexpected xdpw source (instance destroy)"
c = c.replace(old, """	wl_list_remove(&cast->link);
	xdpw_pwr_stream_destroy(cast);
	free(cast->target);
""")
open(path, "w").write(c)
PY
(cd "$SRC" && meson setup build -Dsd-bus-provider=libsystemd -Dman-pages=disabled >/dev/null && ninja -C build >/dev/null)
install -m 755 "$SRC/build/xdg-desktop-portal-wlr" "$BIN"
rm -rf "$WORK"
echo "built $BIN"
