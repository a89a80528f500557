#!/usr/bin/env python3
"""irohsrc refusals as a Python application sees them through GObject introspection: it
decides by error domain and code, never by text. One process: an `irohsink max-viewers=1`
host and `irohsrc` viewers, built with Gst.parse_launch. Run by tests/python.rs, which points
GST_PLUGIN_PATH at the plugin cargo built; exits non-zero on the first failed check."""

import base64

import gi

gi.require_version("Gst", "1.0")
from gicheck import check, wait_for  # noqa: E402
from gi.repository import Gst  # noqa: E402

LOOPBACK = "relay=disabled bind-address=127.0.0.1:0"



def viewer(ticket):
    p = Gst.parse_launch(f"irohsrc ticket={ticket} {LOOPBACK} reconnect=false ! fakesink")
    p.set_state(Gst.State.PLAYING)
    return p


def first_error(pipeline, seconds=15):
    """The first error on the bus: (GLib.Error, details reason), or (None, None)."""
    msg = pipeline.get_bus().timed_pop_filtered(seconds * Gst.SECOND, Gst.MessageType.ERROR)
    if msg is None:
        return None, None
    err, _debug = msg.parse_error()
    details = msg.parse_error_details()
    return err, details.get_string("reason") if details else None


def with_other_secret(ticket):
    """The same host address with one bit of the secret flipped (see src/ticket.rs: pp1 +
    base32 of version(1) | endpoint id(32) | secret(16) | addresses)."""
    body = ticket[3:].upper()
    raw = bytearray(base64.b32decode(body + "=" * (-len(body) % 8)))
    raw[1 + 32] ^= 1
    return "pp1" + base64.b32encode(bytes(raw)).decode().rstrip("=").lower()


def expect_refusal(ticket, code, reason, text):
    v = viewer(ticket)
    err, got_reason = first_error(v)
    v.set_state(Gst.State.NULL)
    check(err is not None, f"{reason}: an error on the bus")
    check(
        err.matches(Gst.ResourceError.quark(), code),
        f"{reason}: {err.domain}/{err.code} is RESOURCE/{code.value_nick} ({err.message})",
    )
    check(got_reason == reason, f"details reason {got_reason!r} == {reason!r}")
    check(text in err.message, f"text {err.message!r} says {text!r}")


def main():
    Gst.init(None)
    host = Gst.parse_launch(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=10/1 "
        f"! irohsink name=sink max-viewers=1 {LOOPBACK}"
    )
    host.set_state(Gst.State.PLAYING)
    sink = host.get_by_name("sink")
    check(wait_for(lambda: sink.get_property("ticket")), "the host has a ticket")
    ticket = sink.get_property("ticket")

    first = viewer(ticket)
    check(wait_for(lambda: sink.get_property("num-viewers") == 1), "the first viewer joined")
    expect_refusal(ticket, Gst.ResourceError.BUSY, "host-full", "host is full")
    first.set_state(Gst.State.NULL)
    check(wait_for(lambda: sink.get_property("num-viewers") == 0), "the first viewer left")

    expect_refusal(
        with_other_secret(ticket), Gst.ResourceError.NOT_AUTHORIZED, "bad-secret", "ticket is not valid"
    )
    new = sink.emit("revoke")
    check(new and new != ticket, "revoke gives a new ticket")
    expect_refusal(ticket, Gst.ResourceError.NOT_AUTHORIZED, "revoked", "revoked")
    host.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
