"""What one HTTP request's unit-of-work script call costs in Redis, and which part of it.

    .venv/bin/python -m bench.uow_call [--calls 6000] [--rounds 3]

Starts a private Redis (``RedisServer``, appendonly off) and ``iii-console --no-ui --role
server`` on the seed project's steps (``events.echo: false``), watches Redis with ``MONITOR``
while one ``POST /messages`` is answered, and keeps that request's ``EVALSHA`` of ``uow.lua``
(its held-back events, its state write, its enqueue). The server is stopped, and the call is
made again ``--calls`` times (each on a new state key, so every call applies) in variants:

- as captured;
- without the request's held-back events (``http.received``, its log line);
- without the enqueue's events (``message.enqueued`` and its counter);
- without either.

For each it prints ``evalsha``'s Redis CPU per call (``INFO commandstats``: it includes the
commands the script runs), the time of those commands, and ``TYPE`` calls per call; the
medians of ``--rounds`` alternated rounds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from iii_console.core.redis_server import RedisServer, free_port
from iii_console.runtime.uow import SOURCE

ROOT = Path(__file__).resolve().parent.parent
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord('"'): b'"', ord("\\"): b"\\", ord("a"): b"\a", ord("b"): b"\b"}


def _unescape(s: bytes) -> bytes:
    """One argument of a ``MONITOR`` line as Redis received it."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == ord("\\"):
            if s[i + 1] == ord("x"):
                out.append(int(s[i + 2 : i + 4], 16))
                i += 4
                continue
            out += _ESCAPES.get(s[i + 1], bytes([s[i + 1]]))
            i += 2
            continue
        out.append(s[i])
        i += 1
    return bytes(out)


def capture(url: str, work: Path) -> list[bytes]:
    """The ARGV of the ``uow.lua`` call one seed request makes."""
    port = free_port()
    config = {
        "redis": {"url": url},
        "server": {"host": "127.0.0.1", "port": port},
        "steps_dir": str(ROOT / "steps"),
        "events": {"echo": False},
    }
    (work / "iii-config.yaml").write_text(json.dumps(config))
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "iii_console.cli", "--no-ui", "--config", str(work / "iii-config.yaml"), "--role", "server"],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}/messages"
        deadline = time.monotonic() + 60
        while True:  # the first request also loads the script
            try:
                if httpx.post(endpoint, json={"text": "warm"}, timeout=5).status_code == 202:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not answer; see {work / 'server.log'}")
            time.sleep(0.2)
        mon = redis.Redis.from_url(url).connection_pool.get_connection()
        mon.send_command("MONITOR")
        mon.read_response()
        assert httpx.post(endpoint, json={"text": "hello, world"}, timeout=5).status_code == 202
        while True:
            line = mon.read_response()
            if isinstance(line, bytes) and b'"EVALSHA"' in line and b'"SendMessage"' in line:
                args = [_unescape(a) for a in _ARG.findall(line.split(b"]", 1)[1])]
                return args[3:]  # after "EVALSHA", the sha and the key count
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def variants(argv: list[bytes]) -> dict[str, list[bytes]]:
    held = 10  # ARGV[11]: the request's held-back events
    enq = argv.index(b"e", 11) + 4 + 4  # the enqueue's own ARGV[5]: its events
    no_held = list(argv)
    no_held[held] = b""
    no_enq = list(argv)
    no_enq[enq] = b""
    neither = list(no_held)
    neither[enq] = b""
    return {
        "as captured": argv,
        "without the held-back events": no_held,
        "without the enqueue's events": no_enq,
        "without either": neither,
    }


def measure(r: redis.Redis, sha: str, argv: list[bytes], calls: int) -> tuple[float, float, float]:
    """(evalsha µs per call, its commands' µs per call, TYPE calls per call)."""
    r.flushall()
    r.config_resetstat()
    field = argv.index(b"s", 11) + 2
    pipe = r.pipeline(transaction=False)
    for i in range(calls):
        a = list(argv)
        a[field] = b"k%d" % i
        pipe.evalsha(sha, 0, *a)
        if i % 200 == 199:
            pipe.execute()
    pipe.execute()
    stats = r.info("commandstats")
    ev = stats["cmdstat_evalsha"]
    inner = sum(
        v["usec"] for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config|resetstat", "cmdstat_flushall")
    )
    return ev["usec_per_call"], inner / calls, stats.get("cmdstat_type", {}).get("calls", 0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.uow_call", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iii-uow-call-") as tmp:
        work = Path(tmp)
        server = RedisServer(work / "redis", appendonly=False)
        server.start()
        try:
            argv = capture(server.url, work)
            r = redis.Redis.from_url(server.url)
            sha = r.script_load(SOURCE)
            runs: dict[str, list[tuple[float, float, float]]] = {}
            for _ in range(opts.rounds):
                for name, args in variants(argv).items():
                    runs.setdefault(name, []).append(measure(r, sha, args, opts.calls))
                    r.script_load(SOURCE)
        finally:
            server.stop()
    print(f"uow.lua, the seed's POST /messages: {len(argv)} arguments, {opts.calls} calls x {opts.rounds} rounds (medians)")
    print(f"{'variant':32s} {'evalsha us':>11s} {'commands us':>12s} {'TYPE calls':>11s}")
    for name, rows in runs.items():
        med = [statistics.median(x[i] for x in rows) for i in range(3)]
        print(f"{name:32s} {med[0]:11.1f} {med[1]:12.1f} {med[2]:11.1f}")


if __name__ == "__main__":
    main()
