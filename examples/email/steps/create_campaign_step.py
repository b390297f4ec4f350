"""POST /campaigns: store the campaign, split its recipients into per-domain batches, fan them out."""

import hashlib
import uuid

from mailer_kit import template_problems
from pydantic import BaseModel, Field, field_validator

from iii_console import Step, http

ADDRESS = r"^[^@\s<>,;]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"


class Recipient(BaseModel):
    email: str = Field(pattern=ADDRESS, max_length=254)
    name: str = Field(default="", max_length=200)


class Campaign(BaseModel):
    subject: str = Field(min_length=1, max_length=200)
    template: str = Field(min_length=1, max_length=100_000)
    recipients: list[Recipient] = Field(min_length=1, max_length=50_000)
    batch_size: int = Field(default=20, ge=1, le=100)

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
        },
    )
    ctx.enqueue_group(
        "email.batch", [{"campaign": campaign, **p} for p in parts], then="email.campaign.done", group_id=f"campaign.{campaign}"
    )
    return {
        "status": 202,
        "body": {
            "campaign": campaign,
            "recipients": total,
            "batches": len(parts),
            "status_url": f"/campaigns/{campaign}",
            "trace_id": ctx.trace_id,
        },
    }
