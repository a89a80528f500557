#!/usr/bin/env bash
# The main job, on this machine: a real pixelpass share, host + viewer.
#
# The host shares a screen (your X11 DISPLAY if there is one, else a private Xvfb screen with
# something moving on it) and prints its ticket; the viewer dials the ticket and serves the
# stream on a loopback URL; mpv (headless) plays 150 frames from it. Everything it starts is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p pixelpass --quiet
bin=$PWD/target/release/pixelpass

work=$(mktemp -d)
pids=()
cleanup() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -z "${DISPLAY:-}" ]; then
  exec 3>"$work/displayfd"
  Xvfb -displayfd 3 -screen 0 1280x720x24 -nolisten tcp >/dev/null 2>&1 &
  pids+=($!)
  exec 3>&-
  for _ in $(seq 100); do [ -s "$work/displayfd" ] && break; sleep 0.05; done
  export DISPLAY=":$(head -n 1 "$work/displayfd")"
  gst-launch-1.0 -q videotestsrc pattern=ball is-live=true ! video/x-raw,width=640,height=480 \
    ! ximagesink sync=false >/dev/null 2>&1 &
  pids+=($!)
  echo "sharing a private Xvfb screen ($DISPLAY)"
fi

"$bin" host --no-audio >"$work/ticket" 2>"$work/host.log" &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/ticket" ] && break; sleep 0.1; done
ticket=$(head -n 1 "$work/ticket")
[ -n "$ticket" ] || { cat "$work/host.log"; exit 1; }
echo "host ticket: $ticket"

"$bin" view "$ticket" --player none --events json >"$work/view.json" 2>"$work/view.log" &
pids+=($!)
for _ in $(seq 200); do grep -q '"event":"url"' "$work/view.json" && break; sleep 0.1; done
url=$(grep -o '"url":"[^"]*"' "$work/view.json" | head -n 1 | cut -d'"' -f4)
[ -n "$url" ] || { cat "$work/view.log"; exit 1; }
echo "viewer serves the share at $url"

start=$(date +%s%N)
XDG_RUNTIME_DIR=$work timeout 60 mpv --no-config --vo=null --ao=null --profile=low-latency --cache=no \
  --frames=150 "$url" >"$work/mpv.log" 2>&1 || { cat "$work/mpv.log" "$work/host.log"; exit 1; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
size=$(grep -o 'VO: \[null\] [0-9]*x[0-9]*' "$work/mpv.log" | awk '{print $3}')
echo "mpv played 150 frames (${size}) of the share in ${ms} ms"
grep -E 'encoder|capturing|joined' "$work/host.log" | sed 's/^/host: /'
