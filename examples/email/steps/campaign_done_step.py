"""Once every batch of a campaign is settled: its sent and failed counts, from the ledger, once."""

from iii_console import Step, queue

config = Step(
    name="CampaignDone",
    description="Counts what the ledger says was sent and failed, once every batch settled",
    triggers=[queue("email.campaign.done")],
    flows=["email"],
)


def handler(result, ctx):
    campaign = result["group_id"].split(".", 1)[1]
    record = ctx.state.get("campaigns", campaign) or {}
    outcomes = ctx.state.list(f"email.ledger.{campaign}")
    sent = sum(1 for o in outcomes.values() if o["status"] == "sent")
    failed = {a: o["code"] for a, o in outcomes.items() if o["status"] == "failed"}
    unsent = record.get("recipients", 0) - sent - len(failed)  # in batches dead-lettered: replay them
    status = "done" if unsent == 0 else "incomplete"
    ctx.state.update(
        "campaigns",
        campaign,
        [
            {
                "type": "merge",
                "path": "",
                "value": {
                    "status": status,
                    "sent": sent,
                    "failed": len(failed),
                    "unsent": unsent,
                    "dead_batches": result["failed"] + result["dead"],
                },
            }
        ],
    )
    ctx.emit(
        "campaign.completed",
        campaign=campaign,
        status=status,
        sent=sent,
        failed=len(failed),
        unsent=unsent,
        bounced=dict(list(failed.items())[:20]),
    )
