"""Dramatiq middleware: the seams where lifecycle events and retry policy hang.

``LifecycleEvents`` only reports; ``RetryPolicy`` only decides. The decision is
written into the message's options and carried out atomically by the consumer
when it settles the message (see ``broker.py``). The events of a settle
(``message.processed``, ``message.retrying``) are shaped here, and
``message.dead_lettered`` by the broker's one dead-letter path, but all are
written by the settle's own script, so they exist exactly when
the settle does; ``message.started`` and ``message.failed`` mark no move in
Redis and go through the process's event buffer.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import MiddlewareError

from iii_console.adapters.queue.deadletters import dead, describe
from iii_console.adapters.queue.names import parse_queue
from iii_console.adapters.queue.storefault import STORE_WAIT_CAP_MS, STORE_WAIT_MS, store_fault
from iii_console.adapters.queue.throttle import ThrottledAtStart
from iii_console.core.config import Config
from iii_console.core.emitter import Emitter
from iii_console.core.errors import user_traceback
from iii_console.core.eventdata import MessageFailed, MessageRetrying
from iii_console.core.events import now_ms
from iii_console.core.retry import Retry


class HookCache:
    """Broker mixin: each signal calls only the middleware that define a hook for it.

    Dramatiq's ``emit_before``/``emit_after`` look every middleware up for every
    signal, and a processed message raises four (before and after ``process_message``
    and ``ack``): most lookups find ``Middleware``'s empty default. Here the hooks a
    signal reaches are listed once, in Dramatiq's order and with its error handling
    (a ``MiddlewareError`` such as ``SkipMessage`` raised before a step propagates;
    any other error is logged and the next hook runs), and listed again when a
    middleware is added through ``add_middleware``.
    """

    middleware: list[dramatiq.Middleware]
    logger: Any

    def add_middleware(self, middleware: dramatiq.Middleware, **kwargs: Any) -> None:
        super().add_middleware(middleware, **kwargs)  # type: ignore[misc]
        self._hooks: dict[str, list[Any]] = {}

    def _hooks_for(self, name: str, order: Any) -> list[Any]:
        try:
            return self._hooks[name]
        except AttributeError:  # no middleware added yet
            self._hooks = {}
        except KeyError:
            pass
        default = getattr(dramatiq.Middleware, name, None)
        found = (getattr(m, name, None) for m in order(self.middleware))
        hooks = self._hooks[name] = [h for h in found if h is not None and getattr(h, "__func__", None) is not default]
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        for hook in self._hooks_for(name, list):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        for hook in self._hooks_for(name, reversed):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)


def _at(message: Any) -> tuple[str, str, str | None, str | None, str, int]:
    """Where ``message`` runs, as the positional arguments of :meth:`Emitter.lifecycle` (``_AT``)."""
    try:
        _topic, step, _ = parse_queue(message.queue_name)
    except ValueError:
        step = None
    opts = message.options
    return (
        opts.get("trace_id", ""),
        message.message_id,
        step,
        opts.get("topic"),
        q_name(message.queue_name),
        opts.get("retries", 0) + 1,
    )


#: The event fields :func:`_at` gives, in its order.
_AT = ("trace_id", "message_id", "step", "topic", "queue", "attempt")


def _where(message: Any) -> dict[str, Any]:
    """:func:`_at` as event fields by name, for the events built with more than those."""
    return dict(zip(_AT, _at(message)))


def non_retryable(exc: BaseException) -> bool:
    """Errors that retrying cannot fix: invalid input, or ``exc.retryable = False``."""
    from pydantic import ValidationError

    return isinstance(exc, ValidationError) or getattr(exc, "retryable", True) is False


class LifecycleEvents(dramatiq.Middleware):
    def __init__(self, emitter: Emitter):
        self.emitter = emitter
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: Any, message: Any) -> None:
        self._started[message.message_id] = time.perf_counter()
        # Where it runs, shaped once for its start and its settle event.
        at = message.iii_at = _at(message)
        self.emitter.put(self.emitter.lifecycle("message.started", *at))
        # Its settle writes only after this (an upper bound: another thread may have put one since).
        message.iii_seq = self.emitter.seq

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        t0 = self._started.pop(message.message_id, None)
        if isinstance(exception, ThrottledAtStart):
            return  # its handler never ran: not a failure (``RetryPolicy`` sends it back to wait, ``message.throttled``)
        duration = round((time.perf_counter() - t0) * 1000, 3) if t0 is not None else None
        if exception is None:
            at = getattr(message, "iii_at", None) or _at(message)
            message.iii_event = self.emitter.lifecycle("message.processed", *at, duration_ms=duration)
            # Its settle follows the handler's own log lines too, not only its start.
            message.iii_seq = max(getattr(message, "iii_seq", 0) or 0, self.emitter.last_put)
        else:
            self.emitter.emit(
                "message.failed",
                duration_ms=duration,
                error=describe(exception),
                data=MessageFailed(traceback=user_traceback(exception)[-8000:]),
                **_where(message),
            )
            message.iii_seq = self.emitter.seq

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._started.pop(message.message_id, None)


class RetryPolicy(dramatiq.Middleware):
    """Per-topic retries with fixed or exponential delay, then the topic's dead-letter queue."""

    def __init__(self, config: Config, emitter: Emitter):
        self.config = config
        self.emitter = emitter

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            return
        opts = message.options
        where = _where(message)
        if isinstance(exception, ThrottledAtStart):
            # Started too late for its admission, and its key's window is full now: back to wait, as at admission.
            opts["throttled"] = int(opts.get("throttled", 0) or 0) + 1
            opts["iii_throttle_at_start"] = True  # from now on admitted to the window as it starts (``Throttle``)
            opts["iii_outcome"] = {"kind": "retry", "delay_ms": exception.wait_ms}
            message.iii_event = self.emitter.make("message.throttled", **where, data=exception.data)
            return
        strategy = self.config.queue(opts.get("topic", ""))
        retries = opts.get("retries", 0)
        opts.setdefault("first_failure_ms", now_ms())
        if isinstance(exception, Retry) and not exception.counts:
            # A wait the handler asked for, not a failure: run again then, attempt not spent.
            delay = exception.delay_ms()
            self._wait(message, where, exception, "deferrals", MessageRetrying(delay_ms=delay, retry_after=True, counts=False))
            return
        fault = None if non_retryable(exception) else store_fault(broker, exception)
        if fault is not None:
            # The deployment's own Redis went away under the handler (its state, its enqueues), or refused
            # its writes (full): not the handler's failure, so no attempt is spent; it runs again once
            # Redis answers and takes writes, waiting 0.5 s, doubling to 30 s. (With RabbitMQ, deliveries go
            # on while Redis is down: without this, a restart of Redis longer than the retries' delays
            # dead-lettered good messages.)
            waits = int(opts.get("iii_store_waits", 0) or 0)
            delay = min(STORE_WAIT_CAP_MS, STORE_WAIT_MS << min(waits, 6))
            self._wait(
                message,
                where,
                exception,
                "iii_store_waits",
                MessageRetrying(delay_ms=delay, counts=False, store_unreachable=True)
                if fault == "unreachable"
                else MessageRetrying(delay_ms=delay, counts=False, store_refuses_writes=True),
            )
            return
        if retries < strategy.max_retries and not non_retryable(exception):
            if isinstance(exception, Retry):
                delay = exception.delay_ms()
                data = MessageRetrying(delay_ms=delay, retry_after=True, counts=True)
            else:
                delay = strategy.delay_for(retries + 1)
                data = MessageRetrying(delay_ms=delay)
            opts["retries"] = retries + 1
            opts["iii_outcome"] = {"kind": "retry", "delay_ms": delay}
            message.iii_event = self.emitter.make(
                "message.retrying", **{**where, "attempt": retries + 2}, error=describe(exception), data=data
            )
            return
        from pydantic import ValidationError

        from iii_console.core.steps import InvalidInput

        # For a fan-in group: invalid input never ran to a result ("dead"); anything else failed.
        invalid = isinstance(exception, (ValidationError, InvalidInput))
        # Carried out by the consumer's settle (``IIIBroker.dead_letter``), which writes the entry and its event.
        opts["iii_outcome"] = dead(
            strategy.dead_letter_queue,
            describe(exception),
            traceback=user_traceback(exception),
            attempts=retries + 1,
            fanin="dead" if invalid else "failed",
        )

    def _wait(self, message: Any, where: dict[str, Any], exception: BaseException, counter: str, data: MessageRetrying) -> None:
        """Run ``message`` again after ``data["delay_ms"]`` without spending an attempt, counting the wait in ``counter``."""
        opts = message.options
        opts[counter] = int(opts.get(counter, 0) or 0) + 1
        opts["iii_outcome"] = {"kind": "retry", "delay_ms": data["delay_ms"]}
        message.iii_event = self.emitter.make("message.retrying", **where, error=describe(exception), data=data)
