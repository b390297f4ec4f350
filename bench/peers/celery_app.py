"""A bare Celery task on Redis (run with ``celery -A bench.peers.celery_app worker``)."""

from __future__ import annotations

import os

from celery import Celery

from bench.work import work as _work

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="bench.work")
def work(data: dict) -> None:
    _work(data)
