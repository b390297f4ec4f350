"""Starting each contender's workers and servers, and filling their queues.

Ours runs real worker processes exactly as the supervisor spawns them
(``python -m iii_console.runtime.worker`` with ``III_CONFIG_JSON``), and the
server through the CLI. The peers run through their own CLIs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import BENCH_STEPS, PY, Bench
from bench.procs import BenchError, Proc, wait_until
from iii_console.adapters.queue.producer import Producer, subscriptions_for
from iii_console.core.config import Config
from iii_console.core.discovery import discover
from iii_console.core.emitter import null_emitter
from iii_console.core.keys import Keys

TOPIC = "bench.work"
FILL_BATCH = 500


# -- ours -----------------------------------------------------------------------


def our_config(bench: Bench, *, steps: Path = BENCH_STEPS, events: bool = True, port: int = 0, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "redis": {"url": bench.url},
        "server": {"host": "127.0.0.1", "port": port},
        "events": {"enabled": events},
        "steps_dir": str(steps),
        "project_dir": str(bench.project_dir),
    }
    for dotted, value in extra.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return Config(**data)


def start_our_workers(bench: Bench, config: Config, processes: int, threads: int, *, target: int = 0) -> list[Proc]:
    return [
        bench.procs.start(
            f"ours-worker{i}",
            [PY, "-m", "iii_console.runtime.worker"],
            cwd=bench.project_dir,
            env={
                "III_CONFIG_JSON": config.model_dump_json(),
                "III_WORKER_INDEX": str(i),
                "III_WORKER_THREADS": str(threads),
                "BENCH_TARGET": str(target),
            },
        )
        for i in range(processes)
    ]


def wait_our_workers(bench: Bench, procs: list[Proc], config: Config) -> None:
    keys = Keys(config.redis.prefix)
    wait_until(
        lambda: bench.redis.hlen(keys.workers) >= len(procs),
        timeout=60,
        what="our workers to register",
        watch=lambda: bench.procs.check(*procs),
    )


def start_our_server(bench: Bench, config: Config, *, roles: tuple[str, ...] = ("server",)) -> Proc:
    """``iii-console --no-ui --role server`` with a config file written for this run."""
    path = bench.project_dir / "iii-config.yaml"
    # JSON is YAML; the CLI then validates it like any config file.
    path.write_text(json.dumps(json.loads(config.model_dump_json(exclude={"project_dir", "source"}))))
    argv = [PY, "-m", "iii_console.cli", "--no-ui", "--config", str(path)]
    for role in roles:
        argv += ["--role", role]
    return bench.procs.start("ours-server", argv, cwd=bench.project_dir)


def our_producer(bench: Bench, config: Config, client: Any) -> Producer:
    steps = discover(config.steps_path)
    return Producer(client, Keys(config.redis.prefix), config, subscriptions_for(steps.steps), null_emitter())


def fill_ours(bench: Bench, config: Config, n: int, data: dict[str, Any] | None = None, *, priority: str | None = None) -> None:
    """Enqueue ``n`` messages through our Producer, pipelined in batches."""
    pipe = bench.redis.pipeline(transaction=False)
    producer = our_producer(bench, config, pipe)
    for i in range(n):
        producer.enqueue(TOPIC, data or {}, trace_id=uuid.uuid4().hex, priority=priority, source="bench")
        if (i + 1) % FILL_BATCH == 0:
            pipe.execute()
    pipe.execute()


# -- Dramatiq -------------------------------------------------------------------


def start_dramatiq(bench: Bench, processes: int, threads: int, *, target: int = 0, app: str = "bench.peers.dramatiq_app") -> Proc:
    return bench.procs.start(
        "dramatiq",
        [PY, "-m", "dramatiq", app, "--processes", str(processes), "--threads", str(threads)],
        env={"BENCH_TARGET": str(target)},
    )


def dramatiq_ready(bench: Bench, processes: int) -> bool:
    """Every process of ``dramatiq --processes N`` on Redis has fetched once (its heartbeat is in Redis)."""
    return bench.redis.zcard("bench-dramatiq:__heartbeats__") >= processes


def fill_dramatiq(n: int, data: dict[str, Any] | None = None, *, actor: str = "work") -> None:
    from bench.peers import dramatiq_app

    send = getattr(dramatiq_app, actor).send
    for _ in range(n):
        send(data or {})


# -- RabbitMQ -------------------------------------------------------------------


def rabbit_url(bench: Bench) -> str:
    node = bench.rabbit()
    if node is None:
        raise BenchError(f"no RabbitMQ: {bench.rabbit_skipped()}")
    return str(node.url)


def our_rabbit_config(bench: Bench, **extra: Any) -> Config:
    return our_config(bench, broker="rabbitmq", rabbitmq__url=rabbit_url(bench), **extra)


def fill_ours_rabbit(bench: Bench, n: int, data: dict[str, Any] | None = None, *, priority: str | None = None) -> None:
    """Purge our quorum queues of the topic, then publish ``n`` messages with our RabbitProducer (confirmed)."""
    from iii_console.adapters.queue.rmq_producer import RabbitProducer

    config = our_rabbit_config(bench)
    steps = discover(config.steps_path)
    subs = subscriptions_for(steps.steps)
    producer = RabbitProducer(bench.redis, Keys(config.redis.prefix), config, subs, null_emitter())
    try:
        names = [producer.topology.queue(q) for s in subs.get(TOPIC, []) for q in s.queues]
        producer.publisher.run(lambda ch: [ch.queue_purge(q) for q in names], declare=producer._declares(TOPIC))
        for _ in range(n):
            producer.enqueue(TOPIC, data or {}, trace_id=uuid.uuid4().hex, priority=priority, source="bench")
    finally:
        producer.publisher.close()


def fill_dramatiq_rabbit(bench: Bench, n: int, data: dict[str, Any] | None = None) -> None:
    """Purge the stock broker's queues, then ``work.send`` ``n`` times, as its users enqueue."""
    rabbit_url(bench)  # the node first: the module reads its URL on import
    from bench.peers import dramatiq_rmq_app

    dramatiq_rmq_app.broker.flush_all()
    for _ in range(n):
        dramatiq_rmq_app.work.send(data or {})
    del dramatiq_rmq_app.broker.connection  # closes it; the next fill opens a new one


# -- Celery ---------------------------------------------------------------------


def start_celery(bench: Bench, instances: int, pool: str, concurrency: int, *, target: int = 0) -> list[Proc]:
    return [
        bench.procs.start(
            f"celery-{pool}{i}",
            [
                PY,
                "-m",
                "celery",
                "-A",
                "bench.peers.celery_app",
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                f"bench{i}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            env={"BENCH_TARGET": str(target)},
        )
        for i in range(instances)
    ]


def fill_celery(n: int, data: dict[str, Any] | None = None) -> None:
    from bench.peers import celery_app

    with celery_app.app.producer_or_acquire() as producer:
        for _ in range(n):
            celery_app.work.apply_async((data or {},), producer=producer)


# -- queue contenders -----------------------------------------------------------

Starter = Callable[[Bench, int, int, int], list[Proc]]


@dataclass(frozen=True)
class QueueContender:
    """How to fill one contender's queue and start its workers (processes, threads, target)."""

    name: str
    fill_key: str
    fill: Callable[[Bench, int, dict[str, Any]], None]
    start: Starter
    #: Where its messages live: ``redis`` (filled once, then DUMP/RESTORE) or ``rabbitmq`` (filled before every run).
    broker: str = "redis"
    #: Whether its started workers are all waiting for messages (``ceiling`` fills only then); None: cannot tell.
    ready: Callable[[Bench, list[Proc], int], bool] | None = None


def ours(*, events: bool = True) -> QueueContender:
    def start(bench: Bench, processes: int, threads: int, target: int) -> list[Proc]:
        return start_our_workers(bench, our_config(bench, events=events), processes, threads, target=target)

    def ready(bench: Bench, procs: list[Proc], processes: int) -> bool:
        return bench.redis.hlen(Keys(our_config(bench).redis.prefix).workers) >= processes

    return QueueContender(
        "iii-console" + ("" if events else " (events off)"),
        "ours",
        lambda b, n, d: fill_ours(b, our_config(b), n, d),
        start,
        ready=ready,
    )


def dramatiq() -> QueueContender:
    return QueueContender(
        "Dramatiq (RedisBroker)",
        "dramatiq",
        lambda b, n, d: fill_dramatiq(n, d),
        lambda b, p, t, target: [start_dramatiq(b, p, t, target=target)],
        ready=lambda b, procs, p: dramatiq_ready(b, p),
    )


def ours_rabbit(*, priority: str | None = None) -> QueueContender:
    """Ours on RabbitMQ; ``priority="high"`` fills the high queue, which no higher queue holds back."""

    def start(bench: Bench, processes: int, threads: int, target: int) -> list[Proc]:
        return start_our_workers(bench, our_rabbit_config(bench), processes, threads, target=target)

    return QueueContender(
        "iii-console (RabbitMQ quorum queues)" + (f", {priority} priority" if priority else ""),
        "ours-rabbitmq" + (f"-{priority}" if priority else ""),
        lambda b, n, d: fill_ours_rabbit(b, n, d, priority=priority),
        start,
        broker="rabbitmq",
    )


def dramatiq_rabbit() -> QueueContender:
    return QueueContender(
        "Dramatiq (RabbitmqBroker)",
        "dramatiq-rabbitmq",
        fill_dramatiq_rabbit,
        lambda b, p, t, target: [start_dramatiq(b, p, t, target=target, app="bench.peers.dramatiq_rmq_app")],
        broker="rabbitmq",
    )


def celery(pool: str) -> QueueContender:
    return QueueContender(
        f"Celery ({pool})",
        "celery",
        lambda b, n, d: fill_celery(n, d),
        lambda b, p, t, target: start_celery(b, p, pool, t, target=target),
    )
