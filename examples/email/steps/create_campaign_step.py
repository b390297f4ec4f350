"""POST /campaigns: store the campaign, split its recipients into per-domain batches, fan them out."""

import hashlib
import uuid

from mailer_kit import template_problems
from pydantic import BaseModel, Field, field_validator

from iii_console import Step, http

#: An address this mailer can send to: ASCII (without SMTPUTF8, which not every server offers, a
#: non-ASCII local part cannot be sent), no spaces or the characters that separate addresses.
ADDRESS = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"


def _one_line(text: str) -> str:
    """A header's text: a line break would end the header (and start another: `Bcc: ...`)."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("must be one line (no line break or NUL)")
    return text


class Recipient(BaseModel):
    email: str = Field(pattern=ADDRESS, max_length=254)
    name: str = Field(default="", max_length=200)

    @field_validator("name")
    @classmethod
    def name_one_line(cls, text: str) -> str:
        return _one_line(text)


class Campaign(BaseModel):
    subject: str = Field(min_length=1, max_length=200)
    template: str = Field(min_length=1, max_length=100_000)
    recipients: list[Recipient] = Field(min_length=1, max_length=50_000)
    batch_size: int = Field(default=20, ge=1, le=100)

    @field_validator("subject")
    @classmethod
    def subject_one_line(cls, text: str) -> str:
        return _one_line(text)

    @field_validator("subject", "template")
    @classmethod
    def known_placeholders(cls, text: str) -> str:
        problems = template_problems(text)
        if problems:
            raise ValueError("; ".join(problems))
        return text


config = Step(
    name="CreateCampaign",
    description="Stores a campaign and fans out its recipients in batches of one domain each",
    triggers=[http("POST", "/campaigns", body=Campaign)],
    enqueues=["email.batch"],
    flows=["email"],
)


def batches(recipients: list[Recipient], size: int) -> list[dict]:
    """Recipients grouped by domain (the throttle's key), then cut into batches of ``size``; each address once."""
    by_domain: dict[str, dict[str, dict]] = {}
    for r in recipients:
        address = r.email.strip()
        domain = address.rpartition("@")[2].lower()
        by_domain.setdefault(domain, {}).setdefault(address.lower(), {"email": address, "name": r.name})
    out = []
    for domain, people in sorted(by_domain.items()):
        people_list = list(people.values())
        for i in range(0, len(people_list), size):
            out.append({"domain": domain, "recipients": people_list[i : i + size]})
    return out


def handler(req, ctx):
    body = req.body
    # With an Idempotency-Key, a retried request is the same campaign (its group is made once).
    key = ctx.idempotency_key
    campaign = hashlib.sha256(key.encode()).hexdigest()[:20] if key else uuid.uuid4().hex[:20]
    parts = batches(body.recipients, body.batch_size)
    total = sum(len(p["recipients"]) for p in parts)
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if key is not None:
        known = ctx.state.get("campaigns", campaign)
        if known is not None:
            if known.get("fingerprint") != fingerprint:
                return {
                    "status": 409,
                    "body": {
                        "error": "this Idempotency-Key was used for another campaign: send a new key for a new campaign",
                        "campaign": campaign,
                        "fields": [{"field": "headers.Idempotency-Key", "message": "used for another campaign"}],
                    },
                }
            # The same request again (a client's retry): the campaign as it stands, started once.
            return _accepted(campaign, known["recipients"], known["batches"], known.get("trace_id", ctx.trace_id))
    ctx.state.set(
        "campaigns",
        campaign,
        {
            "subject": body.subject,
            "template": body.template,
            "recipients": total,
            "batches": len(parts),
            "status": "sending",
            "trace_id": ctx.trace_id,
            "fingerprint": fingerprint,
        },
    )
    ctx.enqueue_group(
        "email.batch", [{"campaign": campaign, **p} for p in parts], then="email.campaign.done", group_id=f"campaign.{campaign}"
    )
    return _accepted(campaign, total, len(parts), ctx.trace_id)


def _accepted(campaign: str, recipients: int, batches: int, trace_id: str) -> dict:
    return {
        "status": 202,
        "body": {
            "campaign": campaign,
            "recipients": recipients,
            "batches": batches,
            "status_url": f"/campaigns/{campaign}",
            "trace_id": trace_id,
        },
    }
