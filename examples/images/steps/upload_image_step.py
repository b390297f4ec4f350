"""POST /images: the raw image body goes straight to the blob store; its hash keys the work."""

from iii_console import Step, http

config = Step(
    name="UploadImage",
    description="Takes an image upload and submits it for rendering, once per distinct content",
    triggers=[http("POST", "/images", accept=["image/*", "application/octet-stream"], max_body_bytes=50_000_000)],
    enqueues=["images.submitted"],
    flows=["images"],
)


def handler(req, ctx):
    ref = req.body  # the uploaded body's blob ref: content-addressed, so its hash names the image
    digest = ref["$blob"].split(":", 1)[1]
    # The same bytes submitted again (a retried upload, a double click) enqueue nothing.
    ctx.enqueue("images.submitted", {"image": ref}, dedup_key=digest)
    image_id = digest[:24]
    return {"status": 202, "body": {"image": image_id, "status_url": f"/images/{image_id}", "trace_id": ctx.trace_id}}
