"""Every 2 s: submit the files dropped into the inbox folder, as an upload would."""

import os
from pathlib import Path

from iii_console import Step, cron

config = Step(
    name="WatchInbox",
    description="Submits images dropped into the inbox folder (IMAGES_INBOX)",
    triggers=[cron("*/2 * * * * *")],
    enqueues=["images.submitted"],
    flows=["images"],
)


def inbox() -> Path:
    return Path(os.environ.get("IMAGES_INBOX") or Path(__file__).resolve().parent.parent / "inbox")


def handler(ctx):
    folder = inbox()
    if not folder.is_dir():
        return
    # Dotfiles are being written: drop a file as .name and rename it when complete.
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        ref = ctx.blobs.put(path)
        # Removed only once enqueued: a crash in between submits it again next tick, and the dedup key
        # (its content hash) makes that a no-op.
        ctx.enqueue("images.submitted", {"image": ref}, dedup_key=ref["$blob"].split(":", 1)[1])
        ctx.logger.info("submitted from inbox", file=path.name)
        path.unlink(missing_ok=True)
