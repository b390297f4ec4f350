"""Every Monday at 06:00 UTC: last week's report (Monday to Sunday)."""

import datetime as dt
from typing import Any

from iii_console import CronTick, Step, SyncContext, cron

from reportjobs.requests import request

config = Step(name="WeeklyReport", triggers=[cron("0 6 * * mon")], enqueues=["reports.requested"], flows=["reports"])


def handler(tick: CronTick, ctx: SyncContext) -> Any:
    today = dt.datetime.fromtimestamp(tick.scheduled_ms / 1000, dt.timezone.utc).date()
    start = today - dt.timedelta(days=today.weekday() + 7)
    request(start, start + dt.timedelta(days=6), ctx, "cron")
