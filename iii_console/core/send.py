"""Test messages posted to a running server's ``POST /messages``, or any JSON route.

What ``iii-console send TEXT`` and the console's send form (``s``) share: one body posted
``count`` times on one connection, stopping at the first failure and saying how many went
before it. Each caller words an unreachable server its own way (the command line can point
at ``--url``, the console cannot).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from iii_console.core.errors import IIIError
from iii_console.core.text import printable


class SendFailed(IIIError):
    """A post failed; ``sent`` went before it. ``unreachable``: nothing answered at all."""

    def __init__(self, problem: str, *, sent: int, unreachable: bool = False, status: int | None = None):
        super().__init__(problem)
        self.sent = sent
        self.unreachable = unreachable
        #: The server's answer's status code, when it answered.
        self.status = status


def refusal(resp: httpx.Response) -> str:
    """What a 4xx/5xx answer says, each invalid field named (``qty: Input should be a valid integer``)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        fields = body.get("fields")
        if isinstance(fields, list) and fields:
            named = "; ".join(
                f"{f.get('field', '?')}: {f.get('message', '')}" if isinstance(f, dict) else str(f) for f in fields[:10]
            )
            return f"server answered {resp.status_code}: {printable(str(body.get('error') or 'refused'))}: {printable(named)}"
    return f"server answered {resp.status_code}: {printable(resp.text[:500])}"


def post_messages(
    base_url: str,
    body: object,
    count: int,
    *,
    token: str = "",
    path: str = "/messages",
    on_answer: Callable[[httpx.Response], None] | None = None,
) -> httpx.Response | None:
    """POST ``body`` to ``base_url`` + ``path`` ``count`` times; the last answer (``None`` if ``count`` is 0).

    ``on_answer`` sees each accepted answer as it comes (a progress bar, a JSON line).
    """
    base = base_url.rstrip("/")
    if token and not (token.isascii() and token.isprintable()):
        raise SendFailed("the auth token (III_AUTH_TOKEN or server.auth_token) must be printable ASCII", sent=0)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent, last = 0, None
    try:
        client = httpx.Client(base_url=base, timeout=10, headers=headers)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise SendFailed(f"not a URL to send to: {base!r} ({exc})", sent=0) from None
    with client:
        for _ in range(count):
            try:
                resp = client.post(path, json=body)
            except httpx.ConnectError:
                raise SendFailed(f"nothing answers at {base}", sent=sent, unreachable=True) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise SendFailed(f"request to {base}{path} failed: {exc}", sent=sent) from None
            if resp.status_code >= 400:
                raise SendFailed(refusal(resp), sent=sent, status=resp.status_code)
            sent += 1
            last = resp
            if on_answer is not None:
                on_answer(resp)
    return last
