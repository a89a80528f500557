"""What the Python (GObject introspection) tests share: a check that stops the script on the
first failure, and a wait on a condition (events, not sleeps)."""

import sys
import time


def check(ok, what):
    if not ok:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def wait_for(cond, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
