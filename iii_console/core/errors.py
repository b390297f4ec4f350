"""One error hierarchy. Errors carry what a user needs to act; only the CLI renders them."""

from __future__ import annotations


class IIIError(Exception):
    """Base of every error iii-console raises on purpose."""

    exit_code = 1


class ConfigError(IIIError):
    """iii-config.yaml is missing, unparsable or invalid. Names the file, line and key."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key = file, line, key
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
