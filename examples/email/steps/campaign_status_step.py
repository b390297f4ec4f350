"""GET /campaigns/{id}: the campaign and its live counts from the ledger."""

from iii_console import Step, http

config = Step(
    name="CampaignStatus",
    description="A campaign's record and how many recipients are sent, failed and pending so far",
    triggers=[http("GET", "/campaigns/{id}")],
    flows=["email"],
)


def handler(req, ctx):
    campaign = req.path_params["id"]
    record = ctx.state.get("campaigns", campaign)
    if record is None:
        return {"status": 404, "body": {"error": f"no campaign {campaign!r}"}}
    outcomes = list(ctx.state.list(f"email.ledger.{campaign}").values())
    sent = sum(1 for o in outcomes if o["status"] == "sent")
    return {
        "status": 200,
        "body": {
            **{k: v for k, v in record.items() if k != "template"},
            "so_far": {"sent": sent, "failed": len(outcomes) - sent, "pending": record["recipients"] - len(outcomes)},
        },
    }
