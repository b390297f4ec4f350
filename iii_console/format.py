"""How events read to a person: one summary line and a colour per type.

Shared by ``iii-console tail``, the headless human output and the console, so an
event looks the same everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from iii_console.core.blobs import summarise_refs
from iii_console.core.events import Event, dumps_strict
from iii_console.core.text import first_line, printable

TYPE_STYLE = {
    "http.received": "cyan",
    "message.enqueued": "blue",
    "message.started": "yellow",
    "message.processed": "green",
    "message.failed": "red",
    "message.retrying": "dark_orange",
    "message.dead_lettered": "bold red",
    "message.replayed": "magenta",
    "message.redelivered": "dark_orange",
    "message.throttled": "orange3",
    "message.deduplicated": "bright_black",
    "group.completed": "bold green",
    "progress": "cyan",
    "state.changed": "bright_black",
    "notification.sent": "bold green",
    "cron.fired": "magenta",
    "cron.skipped": "dark_orange",
    "worker.started": "bright_blue",
    "worker.heartbeat": "bright_black",
    "worker.stopped": "bright_blue",
    "redis.down": "bold red",
    "redis.restarted": "bold yellow",
    "log": "white",
    "step.error": "bold red",
    "config.reloaded": "bright_blue",
}


def clock(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def short(v: Any, n: int = 60) -> str:
    """``v`` in at most ``n`` characters; a blob ref in it reads as its name, size and type."""
    if isinstance(v, str):
        s = v
    else:
        s = json.dumps(v, default=str, separators=(",", ":"))
        if '"$blob"' in s:  # walked only when there is a ref to show
            s = json.dumps(summarise_refs(v), default=str, separators=(",", ":"))
    return s if len(s) <= n else s[: n - 1] + "…"


def detail(ev: Event) -> str:
    """The event's summary on one line: a multi-line error gives its first line and how many follow."""
    return first_line(_detail(ev))


def _detail(ev: Event) -> str:
    d = ev.data if isinstance(ev.data, dict) else {}
    t = ev.type
    if t == "http.received":
        return f"{d.get('method', '')} {d.get('path', '')} {short(d.get('body'), 50)}"
    if t == "message.enqueued":
        return f"→ {ev.topic} [{d.get('priority', 'normal')}] {short(d.get('payload'), 50)}"
    if t in ("message.started",):
        return f"{ev.topic} attempt {ev.attempt}"
    if t == "message.processed":
        return f"{ev.topic} in {ev.duration_ms:.1f} ms" if ev.duration_ms is not None else str(ev.topic)
    if t == "message.failed":
        return f"attempt {ev.attempt}: {ev.error}" if ev.attempt is not None else str(ev.error)
    if t == "message.retrying":
        if d.get("store_unreachable"):
            how = " (Redis unreachable, attempt not spent)"
        elif d.get("store_refuses_writes"):
            how = " (Redis refuses writes, attempt not spent)"
        elif not d.get("retry_after"):
            how = ""
        else:
            how = " (Retry)" if d.get("counts", True) else " (Retry, attempt not spent)"
        return f"attempt {ev.attempt} in {d.get('delay_ms')} ms{how}"
    if t == "message.throttled":
        when = " at its start" if d.get("at_start") else ""
        return f"key {d.get('key')}: over {d.get('reason')}{when}; waits {d.get('wait_ms')} ms (attempt not spent)"
    if t == "message.deduplicated":
        return f"dedup key {d.get('dedup_key')}: already enqueued as {short(d.get('message_ids'), 40)}"
    if t == "group.completed":
        return f"group {d.get('group_id')}: {d.get('ok')} ok, {d.get('failed')} failed, {d.get('dead')} dead of {d.get('total')}"
    if t == "progress":
        done, total = d.get("done"), d.get("total")
        frac = done / total if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total else 0
        bar = "█" * round(frac * 10) + "░" * (10 - round(frac * 10))
        return f"{bar} {done}/{total}" + (f" {d['note']}" if d.get("note") else "")
    if t == "message.dead_lettered":
        return f"→ {d.get('dlq')} after {d.get('attempts', '?')} attempts: {ev.error}"
    if t == "message.redelivered":
        return f"{d.get('reason', '')}: {ev.worker or d.get('worker_id', '?')} held it; back at the head of its queue (delivery {d.get('deliveries', '?')})"
    if t == "state.changed":
        new = d.get("new")
        status = f" status={new.get('status')}" if isinstance(new, dict) and "status" in new else ""
        return f"{d.get('group')}/{d.get('key')} {d.get('op', '')}{status}"
    if t == "notification.sent":
        return short(d.get("summary") or d, 70)
    if t in ("cron.fired", "cron.skipped"):
        if t == "cron.skipped":
            return str(d.get("reason", ""))
        return f"{d.get('expression', '')} " + ("run by hand" if d.get("manual") else f"drift {d.get('drift_ms', '?')} ms")
    if t.startswith("worker."):
        how = d.get("signal") or (f"exit {d['exit_code']}" if "exit_code" in d else "")
        why = f"{d.get('reason', '')} ({d['cause']}): {d.get('detail', '')}" if d.get("cause") else d.get("reason", "")
        back = f"requeued {d['requeued']}" if "requeued" in d else ""
        gave_up = f"abandoned {d['abandoned']}" if d.get("abandoned") else ""
        return " ".join(str(x) for x in (d.get("name") or d.get("id", ""), why, how, back, gave_up) if x)
    if t == "redis.down":
        return f"{ev.error or ''}; restarting in {d.get('restart_in_ms', '?')} ms"
    if t == "redis.restarted":
        return f"pid {d.get('pid')} after {d.get('down_ms', '?')} ms down (restart {d.get('restarts', '?')})"
    if t == "log":
        extra = {k: v for k, v in d.items() if k not in ("level", "message")}
        return f"{d.get('level', 'info')}: {d.get('message', '')} {short(extra, 50) if extra else ''}".rstrip()
    if t == "step.error":
        return str(ev.error or "")
    return short(d) if d else ""


def line(ev: Event) -> str:
    """One line, whatever the event holds: control characters in it are escaped (:func:`printable`)."""
    trace = ev.trace_id[:8] if ev.trace_id else "-" * 8
    return printable(f"{clock(ev.ts)}  {ev.type:<22} {(ev.step or '-'):<18} {trace}  {detail(ev)}")


def json_line(ev: Event) -> str:
    """Strict JSON (no ``NaN``/``Infinity``, which jq refuses); control characters are escaped by JSON itself."""
    return dumps_strict(ev.as_dict(), default=str, separators=(",", ":"))


_encode = msgspec.json.encode
_validate = msgspec.json.decode
#: An entry's text fields (its key, the line's name), in the order ``Event.as_dict`` gives them (``ts`` first after ``type``).
_TEXT = tuple((name.encode(), name) for name in ("trace_id", "message_id", "step", "topic", "queue"))


def json_line_of(entry_id: Any, raw: Mapping[Any, Any]) -> str:
    """``json_line(Event.decode(entry_id, raw))`` read off the stream entry, without building the event.

    The echo and ``tail --json`` print thousands of events a second; this costs a fraction
    of decoding ``data`` and encoding it again: ``data`` is copied as stored when it is strict
    JSON (what every writer of ours stores), checked by msgspec, which refuses ``NaN``,
    ``Infinity`` and numbers past a float. Anything else (such data, a non-finite
    ``duration_ms``, an entry that is not an event) takes the full path. The line holds the
    same values as :func:`json_line`'s; text outside ASCII is written as UTF-8 instead of
    ``\\u`` escapes. An entry as a client without ``decode_responses`` reads it (bytes keys
    and values, what the echo reads) is looked up as it is; one with text keys is copied to bytes first.
    """
    try:
        if not isinstance(raw.get(b"type"), bytes):  # text keys (a client with decode_responses), or no type
            raw = {_bytes(k): _bytes(v) for k, v in raw.items()}
        return _line_of_bytes(entry_id, raw)
    except (KeyError, ValueError, UnicodeError, AttributeError, TypeError, msgspec.MsgspecError):
        return json_line(Event.decode(entry_id, raw))


def _bytes(v: Any) -> Any:
    return v.encode() if isinstance(v, str) else v


def _line_of_bytes(entry_id: Any, raw: Mapping[Any, Any]) -> str:
    """:func:`json_line_of` of an entry with bytes keys and values, looked up as they are."""
    get = raw.get
    out: dict[str, Any] = {"type": raw[b"type"].decode(), "ts": int(get(b"ts", 0))}
    for key, name in _TEXT:
        v = get(key)
        if v:
            out[name] = v.decode()
    v = get(b"attempt")
    if v is not None:
        out["attempt"] = int(v)
    v = get(b"worker")
    if v:
        out["worker"] = v.decode()
    v = get(b"duration_ms")
    if v is not None:
        d = float(v)
        if not math.isfinite(d):
            raise ValueError(d)
        out["duration_ms"] = d
    v = get(b"error")
    if v:
        out["error"] = v.decode()
    v = get(b"data")
    if v is not None:
        value = _validate(v)
        if value is not None and value != "":
            out["data"] = msgspec.Raw(v)
    out["id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return _encode(out).decode()
