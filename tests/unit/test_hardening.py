"""Hardening that needs no server: redaction, terminal escapes, Redis URLs, config and schema loading."""

from __future__ import annotations

import http.server
import json
import math
import random
import threading
import time
from datetime import UTC, datetime

import pytest

from iii_console.core.config import load_config, redact_url, redis_url_problem
from iii_console.core.errors import ConfigError
from iii_console.core.events import (
    DATA_MAX_BYTES,
    REDACTED,
    Event,
    dumps_strict,
    encode_data,
    loads_finite,
    redact,
    set_redaction,
)
from iii_console.core.redact import DEFAULT_WORDS, Redactor
from iii_console.core.redis_server import version_warning
from iii_console.core.steps import JsonSchema
from iii_console.core.text import printable
from iii_console.format import json_line, line

# -- redaction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "pwd",
        "private_key",
        "privateKey",
        "jwt",
        "session",
        "sessionid",
        "sessionId",
        "auth",
        "bearer",
        "signature",
        "otp",
        "pin",
        "ssh_key",
        "X-API-Key",
        "Set-Cookie",
        "tokens",
        "oauth_token",
        "client_secret",
        "password",
        "db_pass",
    ],
)
def test_secret_words_are_redacted_as_whole_words(key):
    """Given a name holding a secret word as a whole word (any case, camelCase or separators), when redacted, then its value is hidden."""
    assert redact({key: "s3cr3t", "user": "bob"}) == {key: REDACTED, "user": "bob"}


@pytest.mark.parametrize("key", ["secretary", "tokenizer", "author", "key", "group", "spinner", "passenger", "opinion"])
def test_words_that_merely_contain_a_secret_word_are_kept(key):
    """Given a name that contains a secret word only inside a longer word, when redacted, then its value is kept."""
    assert redact({key: "visible"}) == {key: "visible"}


def test_headers_as_pairs_and_name_value_objects_are_redacted():
    """Given headers as [name, value] pairs and as {"name", "value"} objects, when redacted, then secret headers' values are hidden."""
    got = redact(
        {
            "headers": [["Authorization", "Bearer abc"], ["Accept", "json"]],
            "har": [{"name": "Cookie", "value": "sid=1"}, {"name": "Accept", "value": "json"}],
        }
    )
    assert got == {
        "headers": [["Authorization", REDACTED], ["Accept", "json"]],
        "har": [{"name": "Cookie", "value": REDACTED}, {"name": "Accept", "value": "json"}],
    }


def test_credentials_inside_strings_are_scrubbed():
    """Given URLs with passwords, secret query parameters and bearer tokens inside strings, when redacted, then only the secrets go."""
    got = redact(
        {
            "dsn": "redis://:pw1@host:6379/0",
            "db": "postgres://ada:p@ss2@db.example/app?sslmode=require",
            "url": "https://api.example/x?api_key=k3y&page=2",
            "msg": "retry with password=hunter2 now",
            "trace": "Authorization: Bearer eyJhbGciOi.abc",
            "plain": "a = b, user@example.com",
        }
    )
    text = json.dumps(got)
    for secret in ("pw1", "p@ss2", "ss2", "k3y", "hunter2", "eyJhbGciOi"):
        assert secret not in text
    assert got["db"] == f"postgres://ada:{REDACTED}@db.example/app?sslmode=require"
    assert "page=2" in got["url"] and got["plain"] == "a = b, user@example.com"


def test_error_texts_on_events_are_scrubbed():
    """Given an event whose error text holds a URL with a password, when encoded for the stream, then the password is gone."""
    ev = Event(type="message.failed", error="cannot reach redis://:hunter2@10.0.0.5:6379/0", step="error")
    assert "hunter2" not in json.dumps(ev.encode()) and ev.encode()["step"] == "error"


def test_the_redaction_list_is_configurable():
    """Given events.redact naming a custom word, when a process uses it, then that word is hidden and a default one no longer is."""
    cfg = load_config(None, env={}).events
    assert tuple(cfg.redact) == DEFAULT_WORDS
    try:
        set_redaction(["customer_ref"])
        assert redact({"customerRef": "c-1", "password": "p"}) == {"customerRef": REDACTED, "password": "p"}
    finally:
        set_redaction(DEFAULT_WORDS)
    assert Redactor(["pin"]).is_secret("PIN") and not Redactor(["pin"]).is_secret("pinned")


# -- terminal escapes ---------------------------------------------------------

HOSTILE = "grp\nFAKE 09:00:00 message.processed\x1b[31mRED\x1b]0;title\x07\x1b[2J\u202eevil"


def test_printable_escapes_every_control_character():
    """Given text with newlines, ESC sequences, BEL and a bidi override, when made printable, then none of them is left raw."""
    out = printable(HOSTILE)
    assert not any(c in out for c in "\n\x1b\x07\u202e")
    assert out.startswith("grp\\nFAKE") and "\\x1b[31mRED" in out and "\\u202e" in out
    assert printable("line 1\n\tline 2\x1b", keep_lines=True) == "line 1\n\tline 2\\x1b"


def test_tail_lines_of_hostile_events_are_one_line_without_escapes():
    """Given a state.changed event whose group and key hold a newline and ESC sequences, when tail renders it, then it is one line with no ESC."""
    ev = Event(type="state.changed", step=HOSTILE, trace_id="t" * 32, data={"group": HOSTILE, "key": "k\x1b[31mRED", "op": "set"})
    out = line(ev)
    assert "\n" not in out and "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mRED" in out


def test_console_renderings_of_hostile_text_hold_no_control_characters():
    """Given events and dead letters holding ESC sequences and newlines, when the console renders them, then the text shown holds none."""
    from iii_console.core.dlq import DeadLetter
    from iii_console.tui.fmt import event_line, pretty_json
    from iii_console.tui.tabs.queues import dead_letter_text
    from iii_console.tui.widgets import lines, t

    ev = Event(type="message.failed", step="s\x1b[2J", error=HOSTILE, attempt=1, topic="t")
    assert "\x1b" not in event_line(ev).plain and "\n" not in event_line(ev).plain
    assert "\x1b" not in t(HOSTILE).plain and "\x1b" not in lines([HOSTILE]).plain
    assert "\x1b" not in pretty_json({"v": HOSTILE, "\x9b": 1}) and "\x9b" not in pretty_json({"\x9b": 1})
    entry = DeadLetter(
        id="e1",
        dlq="dead-letters",
        topic="t",
        step="s",
        queue="q",
        message_id="m",
        trace_id="tr",
        error=HOSTILE,
        traceback=f"Traceback:\n  {HOSTILE}",
        attempts=1,
        first_failure_ms=1,
        last_failure_ms=2,
        data={"x": HOSTILE},
        raw=None,
        priority="normal",
    )
    shown = dead_letter_text(entry).plain
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown


# -- Redis URLs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://127.0.0.1:6380/0?password=s3cr3t", "s3cr3t"),
        ("redis://user:x@LEAK9@127.0.0.1:6380/0", "LEAK9"),
        ("redis://:pw@127.0.0.1:6380/0", "pw@"),
        ("rediss://user:hunter2@h:6380/0?ssl_cert_reqs=none", "hunter2"),
    ],
)
def test_redacted_urls_hold_no_password(url, secret):
    """Given a Redis URL with a password in its query or an unescaped @ in it, when redacted, then no part of the password is left."""
    assert secret not in redact_url(url) and "***" in redact_url(url)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://127.0.0.1:6379/0?foo=bar", "unknown option 'foo'"),
        ("redis://127.0.0.1:6379/0?ssl_cert_reqs=none", "TLS options need a rediss:// URL"),
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "not a valid Redis URL"),
    ],
)
def test_bad_url_options_are_one_clear_problem(url, needle):
    """Given a Redis URL whose query the client cannot use, when checked, then it is a problem naming the option (not a TypeError later)."""
    assert needle in (redis_url_problem(url) or "")


def test_a_config_error_does_not_repeat_a_value_from_the_environment(tmp_path):
    """Given redis.url: ${SECRET} whose value is no URL, when loaded, then the error names file, line and key but not the value."""
    (tmp_path / "iii-config.yaml").write_text("redis:\n  url: ${SECRET}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "iii-config.yaml", env={"SECRET": "AKIAIOSFODNN7EXAMPLE"})
    assert "AKIA" not in str(exc.value) and "iii-config.yaml:2: redis.url" in str(exc.value)


@pytest.mark.parametrize(
    ("version", "warns"),
    [
        ("6.2.14", "fixed in 6.2.20"),
        ("6.2.20", None),
        ("7.2.4", "fixed in 7.2.11"),
        ("7.4.6", None),
        ("8.2.2", None),
        ("8.4.0", None),
        ("7.0.15", "did not get the 2025 security fixes"),
        ("5.0.7", "did not get"),
        ("weird", None),
    ],
)
def test_redis_versions_with_known_fixed_issues_are_warned_about(version, warns):
    """Given a Redis version, when judged, then releases older than their line's security fixes get one line naming the fix."""
    got = version_warning(version)
    assert (got is None) if warns is None else (warns in got and "\n" not in got)


# -- JSON at the edge ---------------------------------------------------------


@pytest.mark.parametrize("body", ['{"n": 1e999999}', '{"n": NaN}', '{"n": -Infinity}', "[Infinity]"])
def test_non_finite_numbers_are_refused_at_the_edge(body):
    """Given a JSON body with a non-finite number, when parsed for a step without a schema, then it is a 400, not accepted."""
    from iii_console.adapters.server import Reject, parse_json_body

    with pytest.raises(Reject) as exc:
        parse_json_body(body.encode(), "application/json", None)
    assert exc.value.status == 400
    assert parse_json_body(b'{"n": 1.5e10}', "application/json", None) == {"n": 1.5e10}


def test_events_with_non_finite_numbers_are_strict_json():
    """Given event data holding NaN and infinities (a step's log fields), when encoded and echoed, then strict parsers read every line."""
    data = encode_data({"ratio": math.nan, "big": [math.inf, -math.inf], "ok": 1.5})
    assert loads_finite(data) == {"ratio": "nan", "big": ["inf", "-inf"], "ok": 1.5}
    ev = Event(type="log", data={"x": math.nan}, duration_ms=math.inf)
    loads_finite(json_line(ev))  # raises on NaN/Infinity


# -- configuration and schemas ----------------------------------------------------


def test_yaml_alias_bombs_are_refused_quickly(tmp_path):
    """Given an iii-config.yaml whose nested aliases expand to 9^6 values, when loaded, then it is refused at once with file and line."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 7):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    (tmp_path / "iii-config.yaml").write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases") as exc:
        load_config(tmp_path / "iii-config.yaml", env={})
    assert time.monotonic() - t0 < 5 and "iii-config.yaml:" in str(exc.value)


def test_a_few_aliases_still_work(tmp_path):
    """Given a config that reuses one queue strategy through an alias, when loaded, then both topics get it."""
    (tmp_path / "iii-config.yaml").write_text("queues:\n  a: &strategy {max_retries: 7}\n  b: *strategy\n")
    cfg = load_config(tmp_path / "iii-config.yaml", env={})
    assert cfg.queue("a").max_retries == 7 and cfg.queue("b").max_retries == 7


def test_schema_refs_never_fetch_urls_and_local_files_resolve(tmp_path):
    """Given a bodySchema whose $ref is an http URL served locally, when compiled, then it is refused and the URL is never requested;
    a file:// $ref is read."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"type": "integer"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ValueError, match="only local files"):
            JsonSchema({"$ref": f"http://127.0.0.1:{server.server_port}/schema.json"})
    finally:
        server.shutdown()
    assert hits == []
    local = tmp_path / "schema.json"
    local.write_text('{"type": "integer"}')
    schema = JsonSchema({"$ref": local.as_uri()})
    assert schema.validate(3) == 3


def _encode_data_through_json(data: object) -> str:
    """What ``encode_data`` wrote before plain data went to msgspec: redacted, then ``json``."""
    try:
        text = dumps_strict(redact(data), default=str, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        text = json.dumps({"unencodable": True, "error": f"{type(exc).__name__}: {exc}"[:500]})
    if len(text) > DATA_MAX_BYTES:
        text = json.dumps({"truncated": True, "bytes": len(text), "preview": text[: DATA_MAX_BYTES // 2]})
    return text


_PIECES = [
    "plain",
    "x=1",
    "password=hunter2",
    "redis://u:pw@host:6379/0",
    "Bearer abc.def",
    "héllo",
    "del\x7f",
    'ctl\x01\n\t"\\',
    "emoji 🎉",
    "",
]
_KEYS = ["id", "text", "password", "apiKey", "name", "key", "value", "Set-Cookie", "naïve", "k\x7f", "tokens"]


def _random_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(12 if depth < 4 else 7)
    if pick == 0:
        return rng.choice(_PIECES)
    if pick == 1:
        return rng.choice([0, -1, 7, 2**70, -(2**65)])
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return rng.choice([1.5, 1e16, -0.0, float("nan"), float("inf")])
    if pick == 4:
        return rng.choice([b"raw", {1, 2}, (1, "a"), datetime(2026, 1, 1, tzinfo=UTC)])
    if pick in (5, 6):
        return rng.choice(_PIECES) + rng.choice(_PIECES)
    if pick in (7, 8, 9):
        return {rng.choice(_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    if pick == 10:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return [rng.choice(["authorization", "Accept", 3]), _random_value(rng, depth + 1)]


def test_plain_data_encodes_to_the_bytes_json_wrote_and_redacts_the_same():
    """Given 5,000 random values (secret names at any depth, credentials in text, non-ASCII, DEL, control
    characters, big ints, floats, NaN, bytes, sets, tuples, datetimes, header pairs, non-str keys), when encoded
    as event data, then the text is exactly what redacting and ``json`` wrote, and the plain path's copy is the
    redacted copy."""
    rng = random.Random(20261205)
    plain_seen = 0
    for _ in range(5000):
        value = _random_value(rng)
        if rng.random() < 0.2:
            value = {1: value} if rng.random() < 0.5 else {"data": value}
        copy, plain = Redactor().plain_copy(value)
        assert copy == redact(value) or copy != copy  # NaN is not equal to itself
        plain_seen += plain
        assert encode_data(value) == _encode_data_through_json(value), value
    assert plain_seen > 500  # the fast path was taken, not only the fallback


def test_plain_copy_redacts_every_secret_redact_does():
    """Given the secret-bearing shapes of the redaction tests, when copied by the plain path, then nothing secret is left."""
    r = Redactor()
    value = {
        "password": "p1",
        "nested": [{"apiKey": "p2"}, {"name": "Authorization", "value": "p3"}, ["Set-Cookie", "p4"]],
        "url": "redis://u:p5@h:1/0",
        "q": "x=1&token=p6",
        "h": "Bearer p7",
    }
    copy, _ = r.plain_copy(value)
    assert copy == r(value)
    text = json.dumps(copy)
    assert not any(f"p{i}" in text for i in range(1, 8))
