"""9. The image pipeline with real work: ours vs a Celery chord vs a Dramatiq group.

Input: ``images`` generated JPEGs of 1.2–2.0 MP (quick: 60, full: 200), written once to a temp
folder. Each image is probed (a full decode), rendered in three sizes (160, 800 and 1600 px boxes,
EXIF-upright, JPEG since they are opaque) and completed once when its three renders are done:
ours runs ``examples/images`` unchanged (blobs by reference, ``ctx.enqueue_group`` with a
completion topic); Celery runs a ``chord`` of a ``group``; Dramatiq a ``group`` with
``add_completion_callback``. All use the example's ``picture_kit`` for the Pillow work, 2 worker
processes × 4 threads each, and one private Redis.

Every image is submitted at once (a burst) after the workers answered and one warm-up image went
through. Measured per image: submission (the harness's clock just before its send) → its
completion callback ran (ours: the ``image.ready`` event ``ImageDone`` emits, ms; the peers: the
callback's own ``time.time()`` in Redis). Images/s is the count over first submission → last
completion. Worker and Redis CPU are counted over the same span.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import contenders as c
from bench.env import PY, ROOT, Bench
from bench.procs import Proc, cpu_seconds, wait_until
from bench.report import Section
from bench.stats import fmt, median, percentiles, ratio
from iii_console.core.blobs import BlobStore
from iii_console.core.events import Event
from iii_console.core.keys import Keys

NAME = "images"
TITLE = "9. Image pipeline (Pillow): probe → 3 renders → completion, ours vs a Celery chord vs a Dramatiq group"
EXAMPLE_STEPS = ROOT / "examples" / "images" / "steps"
PROCESSES, THREADS = 2, 4
#: Canvas sizes cycled through: 1.2–2.0 MP, landscape, square and portrait.
CANVASES = ((1600, 1000), (1200, 1200), (1000, 1500), (1440, 1080), (1680, 1050), (1920, 1040))
DONE = "bench:images:done"
PIDS = "bench:images:pids"


# -- input ----------------------------------------------------------------------


def make_image(path: Path, seed: int) -> None:
    """A photo-like JPEG: smooth colour fields, shapes with hard edges and a little grain."""
    from PIL import Image, ImageDraw, ImageFilter

    rnd = random.Random(seed)
    w, h = CANVASES[seed % len(CANVASES)]
    small = Image.new("RGB", (24, 16))
    small.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(24 * 16)])
    img = small.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r = rnd.randrange(20, 200)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        if rnd.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.line((x, y, rnd.randrange(w), rnd.randrange(h)), fill=colour, width=rnd.randrange(2, 12))
    grain = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(img.filter(ImageFilter.SMOOTH), grain, 0.12)
    img.save(path, "JPEG", quality=90)


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.jpg"
        make_image(p, i)
        paths.append(p)
    return paths


# -- contenders -----------------------------------------------------------------


@dataclass
class Run:
    submitted: dict[str, float]
    done: dict[str, float]
    cpu_s: float
    redis_cpu_s: float
    renders_ok: int

    @property
    def latencies_ms(self) -> list[float]:
        return [(self.done[k] - t) * 1000 for k, t in self.submitted.items() if k in self.done]

    @property
    def rate(self) -> float:
        span = max(self.done.values()) - min(self.submitted.values())
        return len(self.submitted) / span if span > 0 else float("nan")


@dataclass
class Contender:
    name: str
    start: Callable[[], list[Proc]]
    #: Blocks until every worker process can take work.
    ready: Callable[[list[Proc]], None]
    #: Submits one image (path, image id).
    send: Callable[[Path, str], object]
    #: image id → completion time (s) of what has completed so far.
    completed: Callable[[], dict[str, float]]
    #: How many images have all three renders, once done.
    renders_ok: Callable[[list[str]], int]


def _image_id(path: Path, store: BlobStore) -> tuple[Any, str]:
    ref = store.put(path, content_type="image/jpeg")
    return ref, ref["$blob"].split(":", 1)[1][:24]


def _ours(bench: Bench, refs: dict[str, Any]) -> Contender:
    import yaml

    queues = yaml.safe_load((EXAMPLE_STEPS.parent / "iii-config.yaml").read_text())["queues"]
    # Same shape as the peers: a render may use every thread of a process (the example caps it at 2).
    queues["images.render"]["concurrency"] = THREADS
    config = c.our_config(bench, steps=EXAMPLE_STEPS, events=True, queues=queues)
    producer = c.our_producer(bench, config, bench.redis)
    keys = Keys(config.redis.prefix)
    seen: dict[str, float] = {}
    statuses: dict[str, str] = {}
    cursor = ["-"]

    def start() -> list[Proc]:
        seen.clear()
        statuses.clear()
        cursor[0] = "-"
        return c.start_our_workers(bench, config, PROCESSES, THREADS)

    def send(path: Path, image_id: str) -> None:
        ref = refs[image_id]
        producer.enqueue(
            "images.submitted", {"image": ref}, trace_id=uuid.uuid4().hex, source="bench", dedup_key=ref["$blob"].split(":", 1)[1]
        )

    def completed() -> dict[str, float]:
        entries = bench.redis.xrange(keys.events, min=cursor[0], max="+", count=5000)
        for entry_id, fields in entries:
            if fields.get(b"type") == b"image.ready":
                ev = Event.decode(entry_id, fields)
                seen.setdefault(ev.data["image"], ev.ts / 1000)
                statuses[ev.data["image"]] = ev.data["status"]
        if entries:
            cursor[0] = "(" + entries[-1][0].decode()
        return seen

    return Contender(
        "iii-console",
        start,
        lambda procs: c.wait_our_workers(bench, procs, config),
        send,
        completed,
        lambda ids: sum(statuses.get(i) == "done" for i in ids),
    )


def _peer_ready(bench: Bench, ping: Callable[[], object], procs: list[Proc]) -> None:
    def up() -> bool:
        ping()
        return bench.redis.scard(PIDS) >= PROCESSES

    wait_until(up, timeout=120, interval=0.2, what="every peer worker process to answer", watch=lambda: bench.procs.check(*procs))


def _peer_done(bench: Bench) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in bench.redis.hgetall(DONE).items()}


def _renders_on_disk(out: Path) -> Callable[[list[str]], int]:
    def count(ids: list[str]) -> int:
        names = {p.name.split("-", 1)[0] + "/" + p.stem.split("-", 1)[1] for p in out.iterdir() if not p.name.startswith(".")}
        return sum(all(f"{i}/{s}" in names for s in ("thumb", "medium", "large")) for i in ids)

    return count


def _celery(bench: Bench, out: Path) -> Contender:
    from bench.peers import images_celery as app

    def start() -> list[Proc]:
        return [
            bench.procs.start(
                f"celery-images{i}",
                [
                    PY,
                    "-m",
                    "celery",
                    "-A",
                    "bench.peers.images_celery",
                    "worker",
                    "-P",
                    "threads",
                    "-c",
                    str(THREADS),
                    "-n",
                    f"images{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                ],
                env={"BENCH_IMAGES_OUT": str(out)},
            )
            for i in range(PROCESSES)
        ]

    return Contender(
        "Celery (chord, threads)",
        start,
        lambda procs: _peer_ready(bench, app.ping.delay, procs),
        lambda path, image_id: app.probe_image.delay(str(path), image_id),
        lambda: _peer_done(bench),
        _renders_on_disk(out),
    )


def _dramatiq(bench: Bench, out: Path) -> Contender:
    from bench.peers import images_dramatiq as app

    def start() -> list[Proc]:
        return [
            bench.procs.start(
                "dramatiq-images",
                [
                    PY,
                    "-m",
                    "dramatiq",
                    "bench.peers.images_dramatiq",
                    "--processes",
                    str(PROCESSES),
                    "--threads",
                    str(THREADS),
                ],
                env={"BENCH_IMAGES_OUT": str(out)},
            )
        ]

    return Contender(
        "Dramatiq (group + callback)",
        start,
        lambda procs: _peer_ready(bench, app.ping.send, procs),
        lambda path, image_id: app.probe_image.send(str(path), image_id),
        lambda: _peer_done(bench),
        _renders_on_disk(out),
    )


# -- one run --------------------------------------------------------------------


def _run(bench: Bench, who: Contender, images: list[tuple[Path, str]], warm: tuple[Path, str], out: Path) -> Run:
    bench.flush()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    procs = who.start()
    watch = lambda: bench.procs.check(*procs)  # noqa: E731
    try:
        who.ready(procs)
        who.send(*warm)  # imports Pillow and opens every connection before the clock starts
        wait_until(
            lambda: warm[1] in who.completed(), timeout=120, interval=0.05, what=f"{who.name}: the warm-up image", watch=watch
        )
        cpu0, redis0 = cpu_seconds(p for proc in procs for p in proc.tree()), bench.redis_cpu_s()
        submitted: dict[str, float] = {}
        for path, image_id in images:
            submitted[image_id] = time.time()
            who.send(path, image_id)
        # One read per poll: the harness must not load Redis or the CPU it measures.
        wait_until(
            lambda: submitted.keys() <= who.completed().keys(),
            timeout=120 + 3 * len(images),
            interval=0.05,
            what=f"{who.name}: every image's completion",
            watch=watch,
        )
        cpu1, redis1 = cpu_seconds(p for proc in procs for p in proc.tree()), bench.redis_cpu_s()
        done = {i: t for i, t in who.completed().items() if i in submitted}
        return Run(submitted, done, cpu1 - cpu0, redis1 - redis0, who.renders_ok(list(submitted)))
    finally:
        for p in procs:
            bench.procs.stop(p, grace_s=10)


def run(bench: Bench) -> Section:
    o = bench.options
    n = 60 if o.quick else 200
    source = bench.tmp / "images-in"
    out = bench.tmp / "images-out"
    paths = make_images(source, n + 1)
    config_dir = c.our_config(bench, steps=EXAMPLE_STEPS)
    store = BlobStore.from_config(config_dir.blobs.url, config_dir.data_dir)
    refs: dict[str, Any] = {}
    ids: list[tuple[Path, str]] = []
    for p in paths:  # ours takes the bytes into its blob store first, as the upload step does
        ref, image_id = _image_id(p, store)
        refs[image_id] = ref
        ids.append((p, image_id))
    warm, images = ids[0], ids[1:]
    megapixels = sum(w * h for w, h in (CANVASES[(i + 1) % len(CANVASES)] for i in range(n))) / n / 1e6
    mean_kb = sum(p.stat().st_size for p, _ in images) / n / 1024

    contenders = [_ours(bench, refs), _celery(bench, out), _dramatiq(bench, out)]
    runs: dict[str, list[Run]] = {x.name: [] for x in contenders}
    for r in range(o.rounds):
        for who in contenders[r % 3 :] + contenders[: r % 3]:  # a different one first every round
            runs[who.name].append(_run(bench, who, images, warm, out))

    sec = Section(
        TITLE,
        header=[
            "contender",
            "images/s",
            "p50 ms",
            "p95 ms",
            "max ms",
            "worker CPU ms/image",
            "Redis CPU ms/image",
            "renders complete",
        ],
    )
    summary: dict[str, dict[str, float]] = {}
    for who in contenders:
        rs = runs[who.name]
        lat = [percentiles(x.latencies_ms, (50, 95, 100)) for x in rs]
        s = summary[who.name] = {
            "rate": median(x.rate for x in rs),
            "p50": median(p[50] for p in lat),
            "p95": median(p[95] for p in lat),
            "max": median(p[100] for p in lat),
            "cpu": median(x.cpu_s * 1000 / n for x in rs),
            "redis": median(x.redis_cpu_s * 1000 / n for x in rs),
        }
        sec.row(
            who.name,
            fmt(s["rate"], 2),
            fmt(s["p50"]),
            fmt(s["p95"]),
            fmt(s["max"]),
            fmt(s["cpu"]),
            fmt(s["redis"], 1),
            " / ".join(f"{x.renders_ok}/{n}" for x in rs),
        )
    ours = summary[contenders[0].name]
    peer = max((x.name for x in contenders[1:]), key=lambda name: summary[name]["rate"])
    best = summary[peer]
    sec.row(
        f"ours ÷ {peer}",
        f"{fmt(ratio(ours['rate'], best['rate']), 2)}×",
        f"{fmt(ratio(ours['p50'], best['p50']), 2)}×",
        f"{fmt(ratio(ours['p95'], best['p95']), 2)}×",
        f"{fmt(ratio(ours['max'], best['max']), 2)}×",
        f"{fmt(ratio(ours['cpu'], best['cpu']), 2)}×",
        f"{fmt(ratio(ours['redis'], best['redis']), 2)}×",
        "",
    )
    sec.target(f"images/s ≥ 1.0× the faster peer ({peer})", ratio(ours["rate"], best["rate"]) >= 1.0)
    sec.note(
        "Images/s per round: "
        + "; ".join(f"{who.name} " + ", ".join(fmt(x.rate, 2) for x in runs[who.name]) for who in contenders)
        + "."
    )
    sec.note(
        f"{n} JPEGs of {megapixels:.1f} MP on average ({mean_kb:.0f} KB), each probed, rendered to 160/800/1600 px "
        f"boxes and completed once; all submitted at once; {PROCESSES} worker processes × {THREADS} threads each "
        f"(Celery: {PROCESSES} `celery worker -P threads -c {THREADS}`; Dramatiq: `--processes {PROCESSES} "
        f"--threads {THREADS}`; ours: `images.render` concurrency {THREADS}), {o.rounds} round(s), medians. "
        "Latency: submission → the image's completion callback. Ratios: ours ÷ the peer with more images/s "
        "(below 1× is better for latency and CPU). Renders complete: images with all three sizes written, per round."
    )
    return sec
