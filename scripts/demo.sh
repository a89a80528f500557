#!/usr/bin/env bash
# A real share on this machine with nothing but gst-launch-1.0 and the built plugin: a host
# (moving test pattern + tone, H.264 + AAC in MPEG-TS) and a viewer that dials its ticket and
# decodes 150 video frames. Prints the ticket and what the viewer decoded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p gst-iroh --quiet
export GST_PLUGIN_PATH=$PWD/target/release

work=$(mktemp -d)
host_pid=""
cleanup() {
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# shellcheck disable=SC2046
gst-launch-1.0 -m $(sed 's/{sink_props}/relay=disabled/' pipelines/host-testsrc.pipeline) >"$work/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 100); do
  ticket=$(grep -o 'ticket=(string)pp1[a-z0-9]*' "$work/host.log" | head -n 1 | cut -d')' -f2 || true)
  [ -n "$ticket" ] && break
  sleep 0.1
done
[ -n "${ticket:-}" ] || { echo "host printed no ticket:"; cat "$work/host.log"; exit 1; }
echo "host ticket: $ticket"
start=$(date +%s%N)
timeout 30 gst-launch-1.0 irohsrc ticket="$ticket" relay=disabled ! tsdemux ! h264parse ! avdec_h264 \
  ! fakesink num-buffers=150 >"$work/viewer.log" 2>&1 || { cat "$work/viewer.log"; exit 1; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "viewer decoded 150 frames of the share in ${ms} ms (30 fps source)"
