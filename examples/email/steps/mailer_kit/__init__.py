"""What the email steps share: the SMTP server's URL, the messages, and reading SMTP replies.

Named ``mailer_kit`` because every example's steps folder goes on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import string
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

#: Where mail goes unless ``SMTP_URL`` says otherwise: the example's aiosmtpd (README).
DEFAULT_SMTP_URL = "smtp://127.0.0.1:8025"
#: The placeholders a template may use.
FIELDS = ("name", "email")
#: How long to wait after a 4xx reply that names no delay.
DEFAULT_RETRY_MS = 60_000


def sender() -> str:
    return os.environ.get("EMAIL_FROM", "news@example.com")


def connect(url: str | None = None, timeout: float = 30.0) -> smtplib.SMTP:
    """One SMTP session: ``smtp://[user:password@]host[:port]``, or ``smtps://`` for TLS from the start."""
    parts = urlsplit(url or os.environ.get("SMTP_URL") or DEFAULT_SMTP_URL)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("SMTP_URL must look like smtp://host:port or smtps://user:password@host:port")
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    conn = cls(parts.hostname, parts.port or (465 if parts.scheme == "smtps" else 25), timeout=timeout)
    conn.ehlo()
    if parts.username:
        conn.login(unquote(parts.username), unquote(parts.password or ""))
    return conn


def template_problems(text: str) -> list[str]:
    """Placeholders of ``text`` (``$name``, ``${email}``) that no recipient can fill."""
    tpl = string.Template(text)
    if not tpl.is_valid():
        return ["a '$' that starts no placeholder (write '$$' for a dollar sign)"]
    return [
        f"unknown placeholder ${p} (use {', '.join('$' + f for f in FIELDS)})" for p in tpl.get_identifiers() if p not in FIELDS
    ]


def message_id(campaign: str, address: str) -> str:
    """The same for every attempt at one recipient of one campaign, so a receiver sees a resend as one message."""
    digest = hashlib.sha256(f"{campaign}\0{address.lower()}".encode()).hexdigest()[:20]
    return f"<{campaign}.{digest}@{sender().rpartition('@')[2] or 'localhost'}>"


def build(campaign: str, subject: str, template: str, recipient: dict[str, Any]) -> EmailMessage:
    fields = {"name": recipient.get("name") or recipient["email"], "email": recipient["email"]}
    msg = EmailMessage()
    msg["From"] = sender()
    msg["To"] = recipient["email"]
    msg["Subject"] = string.Template(subject).safe_substitute(fields)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id(campaign, recipient["email"])
    msg.set_content(string.Template(template).substitute(fields))
    return msg


_DELAY = re.compile(r"(\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m)\b", re.IGNORECASE)


def retry_delay_ms(reply: str) -> int:
    """The wait a 4xx reply asks for ("try again in 30 seconds", "retry in 5 min"), else ``DEFAULT_RETRY_MS``."""
    found = _DELAY.search(reply)
    if not found:
        return DEFAULT_RETRY_MS
    value, unit = float(found.group(1)), found.group(2).lower()
    return max(100, int(value * (60_000 if unit.startswith("m") else 1000)))


def reply_of(exc: smtplib.SMTPException, address: str) -> tuple[int, str]:
    """The SMTP code and text that refused ``address``."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = exc.recipients.get(address, (451, b"refused"))
    elif isinstance(exc, smtplib.SMTPResponseException):
        code, text = exc.smtp_code, exc.smtp_error
    else:  # disconnected mid-session: try again later
        return 421, str(exc) or "connection lost"
    return int(code), text.decode(errors="replace") if isinstance(text, bytes) else str(text)
