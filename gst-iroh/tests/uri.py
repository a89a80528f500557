#!/usr/bin/env python3
"""pixelpass:// as GStreamer applications see it: playbin opens a share by URI (irohsrc is the
URI handler, the query sets its properties), gst-play-1.0 plays one, and a bad URI is a
Gst.URIError.BAD_URI with the reason. One process hosts with irohsink. Run by tests/python.rs,
which points GST_PLUGIN_PATH at the plugin cargo built; exits non-zero on the first failed
check."""

import os
import subprocess
import time

import gi

gi.require_version("Gst", "1.0")
from gicheck import check, wait_for  # noqa: E402
from gi.repository import GLib, Gst  # noqa: E402

QUERY = "relay=disabled&bind-address=127.0.0.1:0&reconnect=false"


def main():
    Gst.init(None)
    check(Gst.Uri.protocol_is_supported(Gst.URIType.SRC, "pixelpass"), "pixelpass:// has a source")
    host = Gst.parse_launch(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse config-interval=-1 "
        "! mpegtsmux name=mux audiotestsrc is-live=true ! avenc_aac ! aacparse ! mux. "
        "mux. ! irohsink name=sink relay=disabled bind-address=127.0.0.1:0"
    )
    host.set_state(Gst.State.PLAYING)
    sink = host.get_by_name("sink")
    check(wait_for(lambda: sink.get_property("ticket") is not None), "the host has a ticket")
    uri = f"pixelpass://{sink.get_property('ticket')}?{QUERY}"

    player = Gst.ElementFactory.make("playbin")
    video = Gst.ElementFactory.make("fakesink")
    video.set_property("signal-handoffs", True)
    video.set_property("sync", True)
    frames = []
    video.connect("handoff", lambda *_: frames.append(1))
    player.set_property("video-sink", video)
    player.set_property("audio-sink", Gst.ElementFactory.make("fakesink"))
    player.set_property("uri", uri)
    player.set_state(Gst.State.PLAYING)
    bus = player.get_bus()

    def no_error():
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            check(False, f"playbin plays without an error: {msg.parse_error()}")
        return len(frames) >= 30

    check(wait_for(no_error), f"playbin decoded 30 frames of {uri[:40]}…")
    src = player.get_property("source")
    check(src.get_factory().get_name() == "irohsrc", "playbin's source is irohsrc")
    check(src.get_property("relay") == "disabled", "the query set irohsrc's relay")
    check(src.get_uri().startswith("pixelpass://pp1"), "the source gives its URI back")
    player.set_state(Gst.State.NULL)
    check(wait_for(lambda: sink.get_property("num-viewers") == 0), "the host saw playbin leave")

    play = subprocess.Popen(
        ["gst-play-1.0", "--no-interactive", "--videosink=fakesink", "--audiosink=fakesink", uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ,
    )
    try:
        check(wait_for(lambda: sink.get_property("num-viewers") == 1), "gst-play-1.0 joined the share")
        time.sleep(1)
        check(play.poll() is None, "gst-play-1.0 keeps playing")
    finally:
        play.terminate()
        out = play.communicate(timeout=10)[0].decode(errors="replace")
    check("ERROR" not in out, f"gst-play-1.0 reported no error:\n{out}")

    for bad, what in [
        ("pixelpass://pp1aaaa", "cut short"),
        (f"pixelpass://{sink.get_property('ticket')}?no-such-thing=1", "unknown parameter"),
        (f"pixelpass://{sink.get_property('ticket')}?latency=soon", "not a valid latency"),
    ]:
        src = Gst.ElementFactory.make("irohsrc")
        try:
            src.set_uri(bad)
            check(False, f"{bad} is refused")
        except GLib.Error as e:
            check(e.matches(Gst.URIError.quark(), Gst.URIError.BAD_URI) and what in e.message,
                  f"bad URI → Gst.URIError.BAD_URI: {e.message}")
    host.set_state(Gst.State.NULL)


main()
