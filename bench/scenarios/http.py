"""2. HTTP ingest: POST /messages on one server process, 32 connections, load from outside.

Ours: ``iii-console --no-ui --role server`` serving the seed's SendMessage step
(validate, store state as ``queued``, enqueue to ``message.sent``, answer 202).
Peer: a bare Litestar endpoint on uvicorn (one process) that only enqueues a
Dramatiq message. No workers run: queued messages just wait. Ours answers
each request in one ``write`` (``adapters/http_protocol.py``), stock uvicorn in
two (headers, then body); a fourth row runs the peer on our protocol, so the
report shows how much of the gap is that alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import contenders as c
from bench.env import PY, SEED_STEPS, Bench
from bench.http_load import Load, closed_load, wait_http
from bench.procs import Proc, cpu_seconds
from bench.report import Section
from bench.stats import fmt, fmt_ratio, median, ratio
from iii_console.core.redis_server import free_port

NAME = "http"
TITLE = "2. HTTP ingest (POST /messages, one server process, 32 connections)"
CONNECTIONS = 32
WARMUP_S = 1.0

OURS = "iii-console (SendMessage step)"
OURS_QUIET = "iii-console, `events.echo: false`"
PEER = "Litestar + Dramatiq send (bare)"
PEER_ONE_WRITE = "the same bare peer on ours' HTTP protocol (one write per answer)"


def _start_ours(bench: Bench, port: int) -> Proc:
    return c.start_our_server(bench, c.our_config(bench, steps=SEED_STEPS, port=port))


def _start_ours_quiet(bench: Bench, port: int) -> Proc:
    """The same without ``--no-ui``'s JSON echo of every event on stdout."""
    return c.start_our_server(bench, c.our_config(bench, steps=SEED_STEPS, port=port, events__echo=False))


def _start_peer(bench: Bench, port: int) -> Proc:
    return bench.procs.start(
        "litestar",
        [
            PY,
            "-m",
            "uvicorn",
            "bench.peers.litestar_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
    )


def _start_peer_one_write(bench: Bench, port: int) -> Proc:
    """The peer, served by uvicorn with the protocol class ours runs (``timed_protocol``)."""
    code = (
        "import uvicorn\n"
        "from iii_console.adapters.http_protocol import timed_protocol\n"
        f"uvicorn.run('bench.peers.litestar_app:app', host='127.0.0.1', port={port}, http=timed_protocol(10, 30), "
        "log_level='warning', access_log=False)\n"
    )
    return bench.procs.start("litestar-one-write", [PY, "-c", code])


def one_run(bench: Bench, start: Callable[[Bench, int], Proc], seconds: float) -> tuple[Load, float, float]:
    """(load result, server CPU % of one core during the load, Redis CPU % of one core during the load)."""
    bench.flush()
    port = free_port()
    server = start(bench, port)
    try:
        url = f"http://127.0.0.1:{port}/messages"
        wait_http(bench, url, server)
        closed_load(bench, url, connections=CONNECTIONS, seconds=WARMUP_S)
        cpu0, redis0, t0 = _cpu(server), bench.redis_cpu_s(), time.monotonic()
        load = closed_load(bench, url, connections=CONNECTIONS, seconds=seconds)
        took = time.monotonic() - t0
        cpu = (_cpu(server) - cpu0) / took * 100
        redis_cpu = (bench.redis_cpu_s() - redis0) / took * 100
        bench.procs.check(server)
    finally:
        bench.procs.stop(server)
    return load, cpu, redis_cpu


def _cpu(proc: Proc) -> float:
    return cpu_seconds(proc.tree())


def run(bench: Bench) -> Section:
    seconds = bench.options.http_seconds
    contenders = (
        (OURS, _start_ours),
        (OURS_QUIET, _start_ours_quiet),
        (PEER, _start_peer),
        (PEER_ONE_WRITE, _start_peer_one_write),
    )
    runs: dict[str, list[tuple[Load, float]]] = {name: [] for name, _ in contenders}
    redis: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for rnd in range(bench.options.rounds):
        for name, start in contenders:
            load, cpu, redis_cpu = one_run(bench, start, seconds)
            runs[name].append((load, cpu))
            redis[name].append(redis_cpu / 100 / load.rps * 1e6 if load.rps else float("nan"))
            print(
                f"  [{NAME}] round {rnd + 1} {name}: {load.rps:,.0f} req/s, p99 {load.latency_ms.get('99', 0):.1f} ms, "
                f"{cpu / 100 / max(load.rps, 1e-9) * 1000:.3f} ms server CPU/req, Redis {redis[name][-1]:.0f} µs/req "
                f"({load.non2xx} non-2xx, {load.errors} errors)",
                flush=True,
            )

    med_rps = {n: median(ld.rps for ld, _ in r) for n, r in runs.items()}
    sec = Section(
        TITLE,
        header=[
            "contender",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "server CPU %",
            "server CPU ms/req",
            "Redis CPU µs/req",
            "non-2xx / errors",
            "÷ bare peer",
        ],
    )
    for name, r in runs.items():
        p = {k: median(ld.latency_ms.get(k, float("nan")) for ld, _ in r) for k in ("50", "90", "99")}
        sec.row(
            name,
            fmt(med_rps[name]),
            fmt(p["50"], 2),
            fmt(p["90"], 2),
            fmt(p["99"], 2),
            fmt(median(x for _, x in r)),
            fmt(median(cpu / 100 / ld.rps * 1000 if ld.rps else float("nan") for ld, cpu in r), 3),
            fmt(median(redis[name])),
            f"{sum(ld.non2xx for ld, _ in r)} / {sum(ld.errors for ld, _ in r)}",
            fmt_ratio(ratio(med_rps[name], med_rps[PEER])),
        )
    for name, what in ((OURS, "(defaults)"), (OURS_QUIET, "with `events.echo: false`")):
        # Contenders alternate within a round, so round i of ours is measured against round i of the peer.
        rounds = [ratio(a.rps, b.rps) for (a, _), (b, _) in zip(runs[name], runs[PEER])]
        each = " / ".join(f"{x:.2f}×" for x in rounds)
        sec.target(f"≥ 1.0 × the bare Litestar + Dramatiq endpoint {what}, every round ({each})", all(x >= 1.0 for x in rounds))
    tool = runs[OURS][0][0].tool
    sec.note(
        f"{seconds:g} s per run after a {WARMUP_S:g} s warm-up, load from `{tool}` ({CONNECTIONS} connections) in its "
        "own process. Ours per request: JSON body validated by the step's pydantic model, `state.set` and the "
        "enqueue applied together when the handler returns by one unit-of-work script call that also writes "
        "`state.changed` and `message.enqueued` (concurrent requests' script calls share pipelined round trips), "
        "events `http.received` and `log` "
        "(written in that same call, ahead of the writes), `message.enqueued`; `--no-ui` also tails and prints the event stream, in a child process of the server's. "
        "Server CPU is the CPU time of the server process and its children (the echo included) over the run "
        "(100 = one core); per request it is that over the requests answered, steadier than req/s on a shared machine. "
        "Redis CPU per request: the run's Redis server's (`INFO cpu`) over the same window. "
        "Ours sends each answer's headers and body in one `write`; stock uvicorn (the bare peer) in two. The last row "
        "is the bare peer served with ours' protocol class: not a target, it shows what that one change gives the peer."
    )
    return sec
