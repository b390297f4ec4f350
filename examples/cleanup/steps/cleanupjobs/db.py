"""The table whose old rows are pruned: ``audit_log`` in ``CLEANUP_DATABASE_URL`` (default ``.iii/cleanup.sqlite``)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, create_engine
from sqlalchemy.engine import Engine

PROJECT = Path(__file__).resolve().parents[2]
metadata = MetaData()
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_ms", BigInteger, nullable=False, index=True),
    Column("message", Text, nullable=False),
)


@functools.cache
def engine() -> Engine:
    url = os.environ.get("CLEANUP_DATABASE_URL", "").strip()
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url:
        (PROJECT / ".iii").mkdir(exist_ok=True)
        url = f"sqlite:///{PROJECT / '.iii' / 'cleanup.sqlite'}"
    eng = create_engine(url)
    metadata.create_all(eng)
    return eng
