"""A small HTTP/1.1 load generator, run as its own process (``python -m bench.loadgen``).

``closed``: N keep-alive connections POST back to back for S seconds (wrk's
model; used when ``wrk`` is not installed). ``paced``: POST at a steady rate
for S seconds, each request on a free connection, and record every answer.
Writes one JSON object to ``--out``. Only talks to the loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class Conn:
    def __init__(self, host: str, port: int, path: str, body: bytes):
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _target(url: str) -> tuple[str, int, str]:
    u = urlsplit(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loadgen only sends to the loopback address")
    return u.hostname, u.port or 80, u.path or "/"


async def closed(url: str, connections: int, seconds: float, body: bytes) -> dict:
    host, port, path = _target(url)
    latencies: list[float] = []
    errors = 0
    non2xx = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors, non2xx
        conn = Conn(host, port, path, body)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.post()
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    conn.close()
                    conn = Conn(host, port, path, body)
                    continue
                latencies.append(time.perf_counter() - t0)
                if status >= 300:
                    non2xx += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "non2xx": non2xx,
        "latencies_ms": _pcts([x * 1000 for x in latencies]),
    }


async def paced(url: str, rate: float, seconds: float, body: bytes) -> dict:
    host, port, path = _target(url)
    idle: list[Conn] = []
    answers: list[dict] = []
    errors = 0

    async def one(sent_at: float) -> None:
        nonlocal errors
        conn = idle.pop() if idle else Conn(host, port, path, body)
        try:
            status, raw = await conn.post()
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            conn.close()
            return
        idle.append(conn)
        try:
            trace_id = json.loads(raw).get("trace_id", "")
        except ValueError:
            trace_id = ""
        answers.append({"sent": sent_at, "done": time.time(), "status": status, "trace_id": trace_id})

    total = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(time.time())))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return {"requests": len(answers), "errors": errors, "answers": answers}


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {str(p): s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))] for p in (50, 75, 90, 99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen")
    ap.add_argument("mode", choices=("closed", "paced"))
    ap.add_argument("--url", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--body", default='{"text": "hello from the benchmark"}')
    ap.add_argument("--out", required=True, help="file to write the JSON result to")
    a = ap.parse_args(argv)
    body = a.body.encode()
    coro = closed(a.url, a.connections, a.seconds, body) if a.mode == "closed" else paced(a.url, a.rate, a.seconds, body)
    result = asyncio.run(coro)
    with open(a.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
