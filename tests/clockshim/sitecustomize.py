"""Test shim: shift this process's wall clock by III_TEST_CLOCK_OFFSET_S seconds.

Put this directory on PYTHONPATH of a child process to simulate a host whose
clock is skewed. Only ``time.time`` and ``time.time_ns`` move (monotonic clocks
do not skew between hosts in a way that matters here)."""

import os
import time

_offset = float(os.environ.get("III_TEST_CLOCK_OFFSET_S", "0") or 0)
if _offset:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _offset
    time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
