"""One error hierarchy. Errors carry what a user needs to act; only the CLI renders them."""

from __future__ import annotations

import redis


class IIIError(Exception):
    """Base of every error iii-console raises on purpose."""

    exit_code = 1


class ConfigError(IIIError):
    """iii-config.yaml is missing, unparsable or invalid. Names the file, line and key."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key = file, line, key
        #: Further problems found in the same file (``config check`` lists every one).
        self.more: list[ConfigError] = []
        where = file or ""
        if line is not None:
            where += f":{line}"
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class StepError(IIIError):
    """A step file failed to import or its config is invalid. Names the file, step and field."""

    exit_code = 2

    def __init__(self, message: str, *, file: str, step: str | None = None, field: str | None = None, line: int | None = None):
        self.file, self.step, self.field, self.line = file, step, field, line
        where = file + (f":{line}" if line else "")
        parts = [where]
        if step:
            parts.append(f"step {step!r}")
        if field:
            parts.append(f"field {field!r}")
        super().__init__(f"{', '.join(parts)}: {message}")
        self.message = message


class RedisUnavailable(IIIError):
    """Redis could not be reached at the configured URL."""

    exit_code = 3


class DecodeError(IIIError):
    """A stored record (event, message, DLQ entry) could not be decoded."""


class StateError(IIIError):
    """A state operation was invalid (bad path, wrong type for increment...)."""


class TimeLimitExceeded(IIIError):
    """A queue handler ran past its queue's ``time_limit_ms``: the attempt failed.

    Raised inside the handler's thread (or its coroutine is cancelled); the queue's
    retry strategy then applies. Catching it does not save the attempt.
    """


class SoftTimeLimitExceeded(TimeLimitExceeded):
    """A queue handler ran past its queue's ``soft_time_limit_ms``; catch it to clean up
    before the hard limit (``time_limit_ms``)."""


def user_traceback(exc: BaseException) -> str:
    """The traceback of a handler's exception starting at the first frame outside the
    framework (Dramatiq, Litestar and iii_console's own runtime), so a person reads their
    own code first. Falls back to the full traceback if every frame is framework."""
    import os
    import traceback

    # The package's folder, from this module's place in it (core/errors.py): the core does not import the package root.
    package = os.path.dirname(os.path.dirname(__file__))
    framework = (package + os.sep, f"{os.sep}dramatiq{os.sep}", f"{os.sep}litestar{os.sep}")
    te = traceback.TracebackException.from_exception(exc)
    frames = te.stack
    first = next((i for i, f in enumerate(frames) if not any(p in f.filename for p in framework)), None)
    if first:
        te.stack = traceback.StackSummary.from_list(frames[first:])
    return "".join(te.format())


def redis_refuses_writes(exc: BaseException) -> bool:
    """Redis refuses writes for where it is, not for what they are: full (``noeviction``
    at ``maxmemory``), a read-only replica, busy running a long script (``BUSY``), unable to
    save its snapshot (``MISCONF``) or short of replicas (``NOREPLICAS``, ``min-replicas-to-write``).
    Each clears once Redis does (or its operator fixes it), not by sending the write otherwise,
    so a client is told to retry and a buffer waits.

    redis-py knows these by their error codes, but Redis before 7 wraps an error
    raised inside a script as ``ERR Error running script ... -OOM command not
    allowed ...``, which redis-py sees as a plain ``ResponseError``.
    """
    if isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)):
        return True
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False  # and not str() of just any exception: a handler's own may not print
    text = str(exc)
    return text.startswith(_REFUSING) or any(code in text for code in _REFUSING_IN_SCRIPT)


def redis_is_full(exc: BaseException) -> bool:
    """Of :func:`redis_refuses_writes`'s refusals, whether ``exc`` is Redis at ``maxmemory`` (``OOM``)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and "OOM command not allowed" in str(exc)


#: Error codes of a Redis that refuses a write for where it is (``redis_refuses_writes``).
_REFUSING = ("OOM ", "READONLY ", "BUSY ", "MISCONF ", "NOREPLICAS ")
#: The same as Redis 6 wraps them when a script's call fails: ``ERR Error running script ... -OOM ...``.
_REFUSING_IN_SCRIPT = ("OOM command not allowed", "READONLY You can't write", "-MISCONF ", "-NOREPLICAS ")
