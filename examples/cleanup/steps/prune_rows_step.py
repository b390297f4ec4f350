"""Delete ``audit_log`` rows older than the retention, a batch per transaction, so the table is never locked long."""

from typing import Any

from sqlalchemy import delete, func, select

from iii_console import CronTick, Step, SyncContext, cron

from cleanupjobs import settings
from cleanupjobs.db import audit_log, engine
from cleanupjobs.sweep import LEASE_MS, run

config = Step(name="PruneRows", triggers=[cron(settings.schedule("20 3 * * *"))], flows=["cleanup"])


def handler(tick: CronTick, ctx: SyncContext) -> Any:
    def sweep(now_ms: int, lease: Any) -> dict[str, Any]:
        cutoff = now_ms - settings.ROW_MAX_AGE_S * 1000
        old = audit_log.c.created_ms < cutoff
        with engine().connect() as conn:
            total = conn.execute(select(func.count()).select_from(audit_log).where(old)).scalar_one()
        removed = batches = 0
        while True:
            with engine().begin() as conn:
                ids = select(audit_log.c.id).where(old).order_by(audit_log.c.id).limit(settings.ROW_BATCH).scalar_subquery()
                n = conn.execute(delete(audit_log).where(audit_log.c.id.in_(ids))).rowcount
            if not n:
                break
            removed, batches = removed + n, batches + 1
            ctx.progress(min(removed, total), max(total, removed), note=f"{removed} rows")
            lease.extend(LEASE_MS)  # LockLost if another run took over: stop rather than race it
        return {"removed": removed, "batches": batches}

    return run("rows", tick, ctx, sweep)
