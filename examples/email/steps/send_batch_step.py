"""One batch: one SMTP session, each recipient at most once (the ledger), bounces recorded, deferrals retried."""

import smtplib
import time

from mailer_kit import build, connect, reply_of, retry_delay_ms, sender
from pydantic import BaseModel

from iii_console import Retry, Step, queue


class Batch(BaseModel):
    campaign: str
    domain: str
    recipients: list[dict]


config = Step(
    name="SendBatch",
    description="Sends one batch over one SMTP connection; 5xx fails a recipient for good, 4xx retries the batch",
    triggers=[queue("email.batch", input=Batch)],
    flows=["email"],
)


def ledger(campaign: str) -> str:
    """The state group that records each recipient's outcome: what makes a retry skip them."""
    return f"email.ledger.{campaign}"


def handler(batch: Batch, ctx):
    campaign = ctx.state.get("campaigns", batch.campaign)
    if campaign is None:
        raise LookupError(f"campaign {batch.campaign!r} is not in state 'campaigns'")
    book = ledger(batch.campaign)
    todo = [r for r in batch.recipients if ctx.state.get(book, r["email"].lower()) is None]
    if len(todo) < len(batch.recipients):
        ctx.logger.info("skipping recipients already settled", skipped=len(batch.recipients) - len(todo))
    if not todo:
        return
    wait_ms, deferred = 0, []
    try:
        session = connect()
    except smtplib.SMTPConnectError as exc:  # a greeting of 421 ("too many connections"): wait as told
        code, text = reply_of(exc, "")
        if code >= 500:
            raise
        raise Retry(after_ms=retry_delay_ms(text), reason=f"the server deferred the session: {code} {text[:200]}") from None
    with session as smtp:  # one session for the whole batch
        for n, person in enumerate(todo, 1):
            address = person["email"]
            try:
                msg = build(batch.campaign, campaign["subject"], campaign["template"], person)
                smtp.send_message(msg, from_addr=sender(), to_addrs=[address])
            except (ValueError, UnicodeError, smtplib.SMTPNotSupportedError) as exc:
                # This recipient's message cannot be made or sent here (a header the mail library refuses, an
                # address the server cannot take without SMTPUTF8): it fails alone, for good; the rest go.
                ctx.state.set(
                    book,
                    address.lower(),
                    {"status": "failed", "code": 0, "reply": f"{type(exc).__name__}: {exc}"[:300], "ms": int(time.time() * 1000)},
                )
                continue
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException, smtplib.SMTPServerDisconnected) as exc:
                code, text = reply_of(exc, address)
                if isinstance(exc, smtplib.SMTPSenderRefused) and code >= 500:
                    raise  # our sender is refused, not this recipient: fail the batch (fix EMAIL_FROM, replay it)
                if code >= 500:  # permanent: recorded, never sent again
                    ctx.state.set(
                        book,
                        address.lower(),
                        {"status": "failed", "code": code, "reply": text[:300], "ms": int(time.time() * 1000)},
                    )
                    continue
                wait_ms = max(wait_ms, retry_delay_ms(text))  # deferred: the rest of the batch still goes now
                deferred.append(f"{address}: {code} {text[:200]}")
                ctx.logger.warning("deferred by the server", address=address, code=code, reply=text[:300])
                if code == 421 or isinstance(exc, smtplib.SMTPServerDisconnected):
                    break  # the server closed the session: the others wait for the retry too
                continue
            ctx.state.set(
                book, address.lower(), {"status": "sent", "message_id": msg["Message-ID"], "ms": int(time.time() * 1000)}
            )
            ctx.progress(n, len(todo), note=f"{batch.domain}: {n}/{len(todo)}")
    if wait_ms:
        # After the server's delay; the ledger keeps the delivered ones out of the next attempt.
        raise Retry(
            after_ms=wait_ms, reason=f"{len(deferred)} deferred by the server, retry in {wait_ms} ms: " + "; ".join(deferred[:5])
        )
