"""GET /images/{id}: where an image stands, and its renders (GET /images/{id}/{size} downloads one)."""

from iii_console import Step, http

config = Step(
    name="ImageStatus",
    description="An image's record; with a size, that render's file",
    triggers=[http("GET", "/images/{id}"), http("GET", "/images/{id}/{size}")],
    flows=["images"],
)


def handler(req, ctx):
    record = ctx.state.get("images", req.path_params["id"])
    if record is None:
        return {"status": 404, "body": {"error": f"no image {req.path_params['id']!r} (it may still be queued)"}}
    size = req.path_params.get("size")
    if size is None:
        return {"status": 200, "body": record}
    render = record.get("renders", {}).get(size)
    if render is None:
        return {
            "status": 404,
            "body": {
                "error": f"no {size!r} render of image {req.path_params['id']!r}",
                "renders": sorted(record.get("renders", {})),
            },
        }
    return render["blob"]  # the file itself, streamed
