"""Drive an HTTP endpoint from outside the server process: ``wrk`` if installed, else ``bench.loadgen``."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from bench.env import PY, Bench
from bench.procs import Proc, wait_until

BODY = '{"text": "hello from the benchmark", "recipient": "bench@example.com"}'
_WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class Load:
    tool: str
    rps: float
    requests: int
    errors: int
    non2xx: int
    #: percentile ("50", "75", "90", "99") -> milliseconds
    latency_ms: dict[str, float] = field(default_factory=dict)


def post_once(url: str) -> int:
    req = urllib.request.Request(url, data=BODY.encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_http(bench: Bench, url: str, server: Proc) -> None:
    def ready() -> bool:
        try:
            return post_once(url) < 300
        except OSError:
            return False

    wait_until(ready, timeout=60, interval=0.1, what=f"{url} to answer", watch=lambda: bench.procs.check(server))


def paced_load(bench: Bench, url: str, rate: int, seconds: float, *, name: str = "paced") -> list[dict]:
    """POST to ``url`` at a steady ``rate`` for ``seconds`` (``bench.loadgen paced``, its own process);
    each answer as the load generator recorded it (status, trace id, times)."""
    out = bench.tmp / f"{name}-{rate}.json"
    bench.procs.run(
        "loadgen",
        [PY, "-m", "bench.loadgen", "paced", "--url", url, "--rate", str(rate), "--seconds", f"{seconds:g}", "--out", str(out)],
        timeout=seconds + 120,
    )
    return list(json.loads(out.read_text())["answers"])


def closed_load(bench: Bench, url: str, *, connections: int, seconds: float) -> Load:
    wrk = shutil.which("wrk")
    if wrk:
        script = bench.tmp / "post.lua"
        script.write_text(_WRK_SCRIPT)
        proc = bench.procs.run(
            "wrk", [wrk, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url], timeout=seconds + 30
        )
        return parse_wrk(proc.log.read_text())
    out = bench.tmp / "loadgen.json"
    bench.procs.run(
        "loadgen",
        [
            PY,
            "-m",
            "bench.loadgen",
            "closed",
            "--url",
            url,
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            "--body",
            BODY,
            "--out",
            str(out),
        ],
        timeout=seconds + 30,
    )
    r = json.loads(out.read_text())
    return Load("bench.loadgen", r["rps"], r["requests"], r["errors"], r["non2xx"], r["latencies_ms"])


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(text: str) -> Load:
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    requests_m = re.search(r"(\d+) requests in", text)
    assert rps_m is not None and requests_m is not None, f"wrk printed no totals: {text[-300:]}"
    rps = float(rps_m.group(1))
    requests = int(requests_m.group(1))
    lat = {
        m.group(1): float(m.group(2)) * _UNIT[m.group(3)]
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    errors = (
        sum(int(x) for x in m.groups())
        if (m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text))
        else 0
    )
    return Load("wrk", rps, requests, errors, non2xx, lat)
