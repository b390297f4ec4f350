"""Delete blobs last put before the retention that no state value and no dead letter refers to."""

from typing import Any

from iii_console import CronTick, Step, SyncContext, cron

from cleanupjobs import settings
from cleanupjobs.sweep import LEASE_MS, blob_refs, run

config = Step(name="SweepBlobs", triggers=[cron(settings.schedule("10 3 * * *"))], flows=["cleanup"])


def handler(tick: CronTick, ctx: SyncContext) -> Any:
    def sweep(now_ms: int, lease: Any) -> dict[str, Any]:
        cutoff = now_ms - settings.BLOB_MAX_AGE_S * 1000
        old = [b for b in ctx.blobs.scan() if b.stored_ms < cutoff]
        if not old:
            return {"removed": 0, "kept": 0}
        # Referenced: reachable from a state value (a report's PDF, an import's file) or from
        # a dead letter's data (a replay needs its file). A new ref is written right after its
        # put, which makes the blob young: bytes put again after the scan above are kept by
        # delete(..., stored_before_ms=), which reads their time again.
        used: set[str] = set()
        for group in ctx.state.groups():
            blob_refs(ctx.state.list(group), used)
        for dead in ctx.dead_letters.list():
            blob_refs(dead.data, used)
        lease.extend(LEASE_MS)  # LockLost (the run fails, and is retried) if another run took over
        removed = freed = 0
        for b in old:
            if b.ref.sha256 not in used and ctx.blobs.delete(b.ref, stored_before_ms=cutoff):
                removed += 1
                freed += b.ref.size
        return {"removed": removed, "kept": len(old) - removed, "freed_bytes": freed}

    return run("blobs", tick, ctx, sweep)
