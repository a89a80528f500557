#!/usr/bin/env bash
# The main job, on this machine: a real pixelpass share, host + viewer, picture and sound.
#
# The host shares a screen (your X11 DISPLAY if there is one, else a private Xvfb screen with
# something moving on it) and its sound (your audio server if one runs, else a private
# PipeWire session with a 440 Hz tone playing), and prints its ticket; the viewer dials the
# ticket and serves the stream on a loopback URL; mpv (headless) plays 150 frames from it, and
# ffprobe/ffmpeg show the viewer got the sound as AAC. Everything it starts is stopped on
# every exit path.
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
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background and waits for it: a signal interrupts the wait at once
# (a foreground command would delay the trap until it ends), and cleanup stops it.
run() {
  "$@" &
  pids+=($!)
  wait $!
}

# Waits up to $1 tenths of a second for the command after it to succeed.
wait_until() {
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

if [ -z "${DISPLAY:-}" ]; then
  exec 3>"$work/displayfd"
  # -noreset: the screen stays up between clients (the ball and the host's capture)
  Xvfb -displayfd 3 -screen 0 1280x720x24 -nolisten tcp -noreset >/dev/null 2>&1 &
  pids+=($!)
  exec 3>&-
  wait_until 100 test -s "$work/displayfd"
  export DISPLAY=":$(head -n 1 "$work/displayfd")"
  gst-launch-1.0 -q videotestsrc pattern=ball is-live=true ! video/x-raw,width=640,height=480 \
    ! ximagesink sync=false >/dev/null 2>&1 &
  pids+=($!)
  echo "sharing a private Xvfb screen ($DISPLAY)"
fi

# Sound: the running audio server, or a private one (D-Bus, PipeWire, WirePlumber,
# pipewire-pulse) with a pinned default sink and a tone playing into it.
tone=0
if pactl info >/dev/null 2>&1; then
  echo "sharing the sound of your audio server ($(pactl get-default-sink))"
else
  export XDG_RUNTIME_DIR=$work/runtime
  mkdir -m 700 "$XDG_RUNTIME_DIR"
  dbus-daemon --session --nofork --print-address=1 --address="unix:path=$XDG_RUNTIME_DIR/bus" \
    >"$work/bus" 2>/dev/null &
  pids+=($!)
  wait_until 50 test -s "$work/bus"
  DBUS_SESSION_BUS_ADDRESS=$(head -n 1 "$work/bus")
  export DBUS_SESSION_BUS_ADDRESS
  pipewire >"$work/pipewire.log" 2>&1 &
  pids+=($!)
  # (wireplumber and pipewire-pulse need the pipewire socket to be there)
  wait_until 100 test -S "$XDG_RUNTIME_DIR/pipewire-0"
  wireplumber >"$work/wireplumber.log" 2>&1 &
  pids+=($!)
  pipewire-pulse >"$work/pipewire-pulse.log" 2>&1 &
  pids+=($!)
  wait_until 150 pactl info || { echo "the private audio session did not come up"; exit 1; }
  pactl load-module module-null-sink sink_name=demo >/dev/null
  wait_until 100 bash -c 'pactl set-default-sink demo && [ "$(pactl get-default-sink)" = demo ]'
  gst-launch-1.0 -q audiotestsrc wave=sine freq=440 volume=0.5 is-live=true ! audioconvert \
    ! pulsesink client-name=demo-tone >/dev/null 2>&1 &
  pids+=($!)
  wait_until 50 bash -c 'pactl list short sink-inputs | grep -q .'
  tone=1
  echo "sharing the sound of a private PipeWire session: a 440 Hz tone"
fi

"$bin" host >"$work/ticket" 2>"$work/host.log" &
pids+=($!)
wait_until 200 test -s "$work/ticket" || { cat "$work/host.log"; exit 1; }
ticket=$(head -n 1 "$work/ticket")
echo "host ticket: $ticket"

"$bin" view "$ticket" --player none --events json >"$work/view.json" 2>"$work/view.log" &
pids+=($!)
wait_until 200 grep -q '"event":"url"' "$work/view.json" || { cat "$work/view.log"; exit 1; }
url=$(grep -o '"url":"[^"]*"' "$work/view.json" | head -n 1 | cut -d'"' -f4)
echo "viewer serves the share at $url"

start=$(date +%s%N)
XDG_RUNTIME_DIR=$work run timeout 60 mpv --no-config --vo=null --ao=null --profile=low-latency --cache=no \
  --frames=150 "$url" >"$work/mpv.log" 2>&1 || { cat "$work/mpv.log" "$work/host.log"; exit 1; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
size=$(grep -o 'VO: \[null\] [0-9]*x[0-9]*' "$work/mpv.log" | awk '{print $3}')
audio=$(grep -o 'AO: \[null\] .*' "$work/mpv.log" | head -n 1 | cut -d' ' -f3-)
echo "mpv played 150 frames (${size}) of the share in ${ms} ms, with sound (${audio:-none})"
[ -n "$audio" ] || { echo "mpv found no sound in the share"; cat "$work/mpv.log" "$work/host.log"; exit 1; }

# The sound, as the viewer serves it: an AAC track, and (with the tone) audible.
run timeout 20 ffprobe -v error -show_entries stream=codec_name,sample_rate,channels \
  -of compact=p=0 "$url" >"$work/ffprobe.txt"
streams=$(sort -u "$work/ffprobe.txt" | tr '\n' ' ')
echo "ffprobe of the viewer's URL: $streams"
case "$streams" in *codec_name=aac*) ;; *) echo "no AAC track in the share"; exit 1 ;; esac
if [ "$tone" = 1 ]; then
  run timeout 30 ffmpeg -nostdin -i "$url" -t 2 -vn -af volumedetect -f null - >"$work/volume.txt" 2>&1
  mean=$(sed -n 's/.*mean_volume: \([-0-9.]*\) dB/\1/p' "$work/volume.txt")
  echo "the tone at the viewer: mean volume ${mean:-?} dB"
  awk -v v="${mean:--99}" 'BEGIN { exit !(v > -40) }' || { echo "the tone did not reach the viewer"; exit 1; }
fi
grep -E 'encoder|capturing|joined' "$work/host.log" | sed 's/^/host: /'
