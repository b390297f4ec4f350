"""Once every size of an image is settled (rendered, or failed for good): the image's outcome, once."""

from picture_kit import SIZES

from iii_console import Step, queue

config = Step(
    name="ImageDone",
    description="Marks the image done (or partial, naming the sizes that failed) when all its renders settled",
    triggers=[queue("images.rendered")],
    flows=["images"],
)


def handler(result, ctx):
    image_id = result["group_id"].split(".", 1)[0]
    record = ctx.state.get("images", image_id) or {}
    missing = [s.name for s in SIZES if s.name not in record.get("renders", {})]
    status = "done" if result["ok"] == result["total"] and not missing else "partial"
    ctx.state.update(
        "images",
        image_id,
        [{"type": "set", "path": "status", "value": status}, {"type": "set", "path": "failed_sizes", "value": missing}],
    )
    ctx.emit(
        "image.ready",
        image=image_id,
        status=status,
        ok=result["ok"],
        failed=result["failed"] + result["dead"],
        failed_sizes=missing,
    )
