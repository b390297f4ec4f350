"""Secrets kept out of events: values under secret-looking names, credentials inside text.

A name is secret when one of the configured words (``events.redact``) is a
whole word of it: names are split into words at ``_``, ``-``, ``.``, spaces and
camelCase humps, so ``privateKey``, ``X-API-Key`` and ``session_id`` match
``private_key``, ``api_key`` and ``session``, while ``secretary`` and
``tokenizer`` do not match ``secret`` and ``token``. A word also matches its
plural (``tokens``).

Besides values under such names (at any depth, also headers given as
``[name, value]`` pairs or ``{"name": ..., "value": ...}`` objects), strings
are scrubbed of the password in ``scheme://user:password@host`` URLs, of
``name=value`` pairs with a secret name (``?password=...``) and of
``Bearer ...`` credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"

#: Values that hold no text, so no secret: kept as they are.
_PLAIN = frozenset((int, float, bool))

DEFAULT_WORDS = (
    "password",
    "pass",
    "passwd",
    "pwd",
    "passphrase",
    "passcode",
    "secret",
    "token",
    "auth",
    "authorization",
    "bearer",
    "cookie",
    "credential",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "ssh_key",
    "jwt",
    "session",
    "sessionid",
    "signature",
    "otp",
    "pin",
    "csrf",
    "xsrf",
)

_HUMP = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def words(name: str) -> tuple[str, ...]:
    """``"X-API-Key"`` -> ``("x", "api", "key")``; ``"privateKey"`` -> ``("private", "key")``."""
    return tuple(w.lower() for w in _HUMP.findall(name))


class Redactor:
    """Decides which names are secret and scrubs credentials out of values."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_WORDS):
        self.patterns = tuple(dict.fromkeys(p for p in patterns if words(p)))
        self._seqs = [words(p) for p in self.patterns]
        self._single = {s[0] for s in self._seqs if len(s) == 1}
        self._multi = [s for s in self._seqs if len(s) > 1]
        #: Name -> is it secret. Payload names repeat endlessly ("id", "text"),
        #: so a name is split once, not once per event.
        self._seen: dict[str, bool] = {}
        alternatives = "|".join(sorted({re.escape(p) for p in self.patterns}, key=len, reverse=True)) or "(?!)"
        #: ``name=value`` (query strings, DSNs, "password=..." in messages) with a secret-looking name.
        self._pair = re.compile(r"(?i)([A-Za-z0-9_.\-]*(?:" + alternatives + r")[A-Za-z0-9_.\-]*)(=)([^&\s;,'\"]+)")

    def is_secret(self, name: Any) -> bool:
        if not isinstance(name, str):
            return False
        hit = self._seen.get(name)
        if hit is None:
            hit = self._match(words(name))
            if len(self._seen) < 10_000:
                self._seen[name] = hit
        return hit

    def _match(self, ws: tuple[str, ...]) -> bool:
        for w in ws:
            if w in self._single or (w.endswith("s") and w[:-1] in self._single):
                return True
        for seq in self._multi:
            n = len(seq)
            for i in range(len(ws) - n + 1):
                got = ws[i : i + n]
                if got == seq or (got[:-1] == seq[:-1] and got[-1] == seq[-1] + "s"):
                    return True
        return False

    def scrub(self, text: str) -> str:
        """``text`` with credentials in URLs, secret ``name=value`` pairs and bearer tokens replaced."""
        if "@" in text and "://" in text:
            text = _URL_CREDENTIALS.sub(_url_sub, text)
        if "=" in text:
            text = self._pair.sub(self._pair_sub, text)
        if "earer" in text:
            text = _BEARER.sub(r"\1" + REDACTED, text)
        return text

    def _pair_sub(self, m: re.Match[str]) -> str:
        return f"{m.group(1)}={REDACTED}" if self.is_secret(m.group(1)) else m.group(0)

    def __call__(self, value: Any) -> Any:
        """``value`` with secrets replaced, at any depth (a new object; ``value`` is not changed)."""
        if type(value) is dict or isinstance(value, Mapping):
            # Runs for every event: scalars and plain strings are kept without a call per value,
            # and the exact built-in types are told apart without the ABCs' isinstance.
            hide_value = "value" in value and self.is_secret(value.get("name", value.get("key")))
            seen = self._seen
            out = {}
            for k, v in value.items():
                secret = seen.get(k) if type(k) is str else None
                if secret is None:
                    secret = self.is_secret(k)
                tv = type(v)
                if secret or (hide_value and k == "value"):
                    out[k] = REDACTED
                elif tv is str:
                    out[k] = self.scrub(v) if ("=" in v or "@" in v or "earer" in v) else v
                elif v is None or tv in _PLAIN:
                    out[k] = v
                elif tv is dict or tv is list or isinstance(v, (Mapping, list, tuple)):
                    out[k] = self(v)
                else:
                    out[k] = v
            return out
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], str) and self.is_secret(value[0]):
                return [value[0], REDACTED]  # a header as a (name, value) pair
            return [self(v) for v in value]
        if isinstance(value, str):
            return self.scrub(value)
        return value

    def plain_copy(self, value: Any) -> tuple[Any, bool]:
        """``(self(value), plain)``: the same redacted copy, and whether it holds only dicts with
        printable-ASCII string keys, lists, printable-ASCII strings, ints, booleans and ``None``
        (what any JSON encoder writes byte for byte as ``json.dumps`` does, ``ensure_ascii`` included)."""
        t = type(value)
        if t is dict:
            hide_value = "value" in value and self.is_secret(value.get("name", value.get("key")))
            seen = self._seen
            plain = True
            out = {}
            for k, v in value.items():
                if type(k) is not str:
                    return self(value), False
                secret = seen.get(k)
                if secret is None:
                    secret = self.is_secret(k)
                if plain and not (k.isascii() and "\x7f" not in k):
                    plain = False
                tv = type(v)
                if secret or (hide_value and k == "value"):
                    out[k] = REDACTED
                elif tv is str:
                    if "=" in v or "@" in v or "earer" in v:
                        v = self.scrub(v)
                    if plain and not (v.isascii() and "\x7f" not in v):
                        plain = False
                    out[k] = v
                elif v is None or tv is int or tv is bool:
                    out[k] = v
                elif tv is dict or tv is list:
                    out[k], p = self.plain_copy(v)
                    plain = plain and p
                else:
                    out[k] = self(v) if isinstance(v, (Mapping, list, tuple)) else v
                    plain = False
            return out, plain
        if t is list:
            if len(value) == 2 and isinstance(value[0], str) and self.is_secret(value[0]):
                return self(value), False  # a header as a (name, value) pair: rare, kept simple
            items = [self.plain_copy(v) for v in value]
            return [v for v, _ in items], all(p for _, p in items)
        if t is str:
            v = self.scrub(value)
            return v, v.isascii() and "\x7f" not in v
        if value is None or t is int or t is bool:
            return value, True
        return self(value), False


#: ``scheme://user:password@`` (also ``scheme://:password@``). The password runs to the
#: *last* ``@`` before the host, so an unescaped ``@`` in it does not leak its end.
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):([^\s/]*)@(?=[^\s@/]*(?:[/\s?#]|$))")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/\-]+=*")


def _url_sub(m: re.Match[str]) -> str:
    return f"{m.group(1)}:{REDACTED}@"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also in ``?password=``), for messages and the screen."""
    out = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}:***@", url)
    return _URL_SECRET_PARAM.sub(r"\1***", out)


_URL_SECRET_PARAM = re.compile(r"(?i)([?&](?:password|passwd|pwd|ssl_password|sentinel_password|auth|token)=)[^&#\s]*")
