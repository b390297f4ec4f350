"""Decode the image once, record what it is, and fan out one render per size."""

from picture_kit import SIZES, BadImage, probe

from iii_console import Step, queue

config = Step(
    name="ProbeImage",
    description="Checks the image decodes (corrupt and oversized ones are dead-lettered at once) and fans out the renders",
    triggers=[queue("images.submitted")],
    enqueues=["images.render"],
    flows=["images"],
)


def handler(data, ctx):
    ref = data["image"]
    digest = ref["$blob"].split(":", 1)[1]
    image_id = digest[:24]
    with ctx.blobs.open(ref) as fh:
        try:
            info = probe(fh)
        except BadImage as exc:
            # Not retryable: straight to the dead-letter queue with its reason, and GET /images/ID says so
            # (it answered "it may still be queued" for good).
            ctx.state.set("images", image_id, {"status": "failed", "name": ref.get("name"), "error": str(exc), "renders": {}})
            raise
    ctx.state.set("images", image_id, {"status": "rendering", "name": ref.get("name"), "source": ref, **info, "renders": {}})
    # The group id names the image, so the completion knows which one it completes; it holds the
    # message id too, so a redelivered probe makes the same group (enqueued once).
    ctx.enqueue_group(
        "images.render",
        [{"image": ref, "id": image_id, "size": s.name, "box": s.box} for s in SIZES],
        then="images.rendered",
        group_id=f"{image_id}.{ctx.message_id}",
        priority=[s.priority for s in SIZES],
    )
