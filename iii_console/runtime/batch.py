"""Collect messages into batches for a batched queue trigger, inside one worker process.

Each message's worker thread submits its (validated) data and waits. The
first message of a batch waits up to ``max_wait_ms`` for more; the thread
whose message fills the batch to ``max_size``, or the first one when its wait
is over, runs the handler once for all of them; then every waiting thread
returns (or raises its own item's exception), so each message is settled, and
retried or dead-lettered, on its own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import CurrentMessage

from iii_console.adapters.queue.names import parse_queue
from iii_console.adapters.queue.throttle import key_value
from iii_console.core.batch import describe_batch, outcomes
from iii_console.core.steps import InvalidInput, Step, validate_input


class _Batch:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.items: list[tuple[Any, dict[str, Any]]] = []
        self.closed = False
        self.results: list[BaseException | None] = []
        self.done = threading.Event()


class Batcher:
    def __init__(self, max_size: int, max_wait_ms: int, run: Callable[[list[Any], list[dict[str, Any]]], None]):
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self._run = run
        self._open: dict[str, _Batch] = {}
        self._cond = threading.Condition()

    def submit(self, key: str, value: Any, meta: dict[str, Any]) -> None:
        """Add one message to its key's batch and wait for the batch; raises this message's failure."""
        with self._cond:
            batch = self._open.get(key)
            first = batch is None
            if batch is None:
                batch = self._open[key] = _Batch(time.monotonic() + self.max_wait_s)
            index = len(batch.items)
            batch.items.append((value, meta))
            runner = False
            if len(batch.items) >= self.max_size:
                runner = self._close(key, batch)
                self._cond.notify_all()
            elif first:
                while not batch.closed:
                    left = batch.deadline - time.monotonic()
                    if left <= 0:
                        runner = self._close(key, batch)
                        break
                    self._cond.wait(left)
        if runner:
            self._execute(batch)
        batch.done.wait()
        failure = batch.results[index]
        if failure is not None:
            raise failure

    def _close(self, key: str, batch: _Batch) -> bool:
        if batch.closed:
            return False
        batch.closed = True
        if self._open.get(key) is batch:
            del self._open[key]
        return True

    def _execute(self, batch: _Batch) -> None:
        values = [v for v, _ in batch.items]
        metas = [m for _, m in batch.items]
        try:
            self._run(values, metas)
            batch.results = outcomes(None, len(values))
        except BaseException as exc:  # the handler's failure is each item's failure (or some items')
            batch.results = outcomes(exc, len(values))
        finally:
            if len(batch.results) != len(values):
                batch.results = [RuntimeError("the batch did not run")] * len(values)
            batch.done.set()


#: ``limit(fn, meta)``: runs ``fn`` (the handler's run over a batch) under the topic's time limits, as
#: the run of the message ``meta`` describes (``TimeLimits.call``'s arguments).
Limit = Callable[[Callable[[], None], dict[str, Any]], None]


def run_key(metas: list[dict[str, Any]]) -> str:
    """A batch run's key (its default group ids start with it): the same messages, in any order, give the same key."""
    ids = sorted(str(m["message_id"]) for m in metas)
    return "batch-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


def batched_actor(
    runner: Any, step: Step, topic: str, schema: Any, spec: Any, *, max_attempts: int, limit: Limit | None = None
) -> Callable[[Any], None]:
    """The actor function of a batched subscription: each message is validated, then joins its key's batch.

    The handler's run over a batch is held to the topic's time limits (``limit``), counted from
    when it starts, not from when its messages arrived: past ``time_limit_ms`` it fails, and so
    does every message of the batch (each then retried or dead-lettered on its own).
    """

    def run_batch(values: list[Any], metas: list[dict[str, Any]]) -> None:
        trig = {"type": "queue", "topic": topic, "priority": metas[0]["priority"], "batch": describe_batch(metas)}

        def call() -> None:
            runner.call_sync(
                step,
                values,
                trace_id=metas[0]["trace_id"],
                attempt=max(m["attempt"] for m in metas),
                trigger=trig,
                message_id=None,
                max_attempts=max_attempts,
                run_key=run_key(metas),
            )

        if limit is None:
            call()
        else:
            limit(call, metas[0])

    batcher = Batcher(spec.max_size, spec.max_wait_ms, run_batch)

    def run(data: Any) -> None:
        msg = CurrentMessage.get_current_message()
        opts = msg.options if msg else {}
        value = validate_input(schema, data)
        key = ""
        if spec.key is not None:
            found = key_value(data, spec.key)
            if found is None:
                raise InvalidInput(
                    [
                        {
                            "field": spec.key,
                            "message": "the batch key has no value in the message data "
                            "(a string or number of 1 to 256 characters is needed)",
                        }
                    ]
                )
            key = found
        batcher.submit(
            key,
            value,
            {
                "message_id": msg.message_id if msg else None,
                "trace_id": opts.get("trace_id", ""),
                "attempt": opts.get("retries", 0) + 1,
                "priority": parse_queue(msg.queue_name)[2] if msg else "normal",
                "queue": msg.queue_name if msg else "",
                "redis_message_id": opts.get("redis_message_id", ""),
            },
        )

    run.__name__ = f"{step.name}_{topic}_batch"
    return run
