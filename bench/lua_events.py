"""What a message's two stream entries cost inside a settle script, in Redis CPU.

    .venv/bin/python -m bench.lua_events [--calls 3000] [--batch 8]

Runs scripts shaped like ``ack_many.lua``'s event part against a private Redis
(``RedisServer``, appendonly off), ``--batch`` messages per call (the group
commit's typical group), each with a ``message.started`` and a
``message.processed`` entry built by :class:`~iii_console.core.events.Event`
as the worker builds them, and prints the script's Redis CPU per message
(``INFO commandstats``: ``evalsha``'s time includes the commands it calls) for:

- the call alone (no events);
- ``cjson.decode`` of the events argument alone;
- the decode and the ``XADD`` of each entry (what the settle scripts do);
- the same ``XADD``s from flat arguments (no JSON);
- one ``XADD`` per entry with a single field holding the entry as one JSON text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import redis

from iii_console.core.events import Event
from iii_console.core.redis_server import RedisServer

SCRIPTS = {
    "the call alone": "return 1",
    "decode the events argument": "local E = cjson.decode(ARGV[1]) return 1",
    "decode, then XADD each entry": """local E = cjson.decode(ARGV[1])
for _, f in ipairs(E.p) do redis.call('XADD', KEYS[1], '*', unpack(f)) end
for _, a in ipairs(E.a) do for _, f in ipairs(a.s) do redis.call('XADD', KEYS[1], '*', unpack(f)) end end
return 1""",
    "XADD each entry from flat arguments": """local i = 1
while i <= #ARGV do
  local c = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + c))
  i = i + c + 1
end
return 1""",
    "XADD each entry as one JSON field": """for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end return 1""",
}


def _event(kind: str, i: int, **kw: object) -> Event:
    return Event(
        type=kind,
        trace_id="3f1c0a9e2b7d4c51",
        message_id=f"7d3c2b1a-0f9e-4d8c-b7a6-{i:012d}",
        step="Work",
        topic="jobs",
        queue="jobs--Work--normal",
        attempt=1,
        worker="bench-host:12345:8f3a2c1d",
        **kw,  # type: ignore[arg-type]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    opts = ap.parse_args()
    b = opts.batch
    started = [_event("message.started", i).flat() for i in range(b)]
    processed = [_event("message.processed", i, duration_ms=0.42).flat() for i in range(b)]
    payload = json.dumps(
        {
            "k": ["iii:events", "iii:metrics:counts", "iii:metrics:durations"],
            "m": 10000,
            "p": started,
            "pt": [["message.started|jobs|Work", b], [], []],
            "a": [{"s": [f], "c": ["message.processed|jobs|Work", 1]} for f in processed],
        },
        separators=(",", ":"),
    )
    flat: list[object] = []
    for f in started + processed:
        flat += [len(f), *f]
    blobs = [json.dumps(f, separators=(",", ":")) for f in started + processed]
    tmp = Path(tempfile.mkdtemp(prefix="iii-lua-events-"))
    server = RedisServer(tmp / "redis", appendonly=False)
    server.start()
    r = redis.Redis.from_url(server.url)
    try:
        print(f"events argument: {len(payload) / b:.0f} bytes per message; {b} messages per call, {opts.calls} calls\n")
        print("| script | Redis CPU µs per message | of which XADD |\n|---|---:|---:|")
        for name, src in SCRIPTS.items():
            sha = r.script_load(src)
            args = flat if "flat" in name else blobs if "one JSON" in name else [payload]
            r.delete("bench:stream")
            r.config_resetstat()
            for n in range(opts.calls):
                r.evalsha(sha, 1, "bench:stream", *args)
                if n % 500 == 499:
                    r.delete("bench:stream")
            stats = r.info("commandstats")
            total = stats["cmdstat_evalsha"]["usec"] / (opts.calls * b)
            xadd = stats.get("cmdstat_xadd", {"usec": 0})["usec"] / (opts.calls * b)
            print(f"| {name} | {total:.2f} | {xadd:.2f} |")
    finally:
        r.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
