"""The database: SQLAlchemy Core on SQLite by default, PostgreSQL (or any SQLAlchemy URL) by ``DATABASE_URL``.

Three tables: ``orders`` (what is imported), ``import_chunks`` (the chunk ledger: one row per
chunk applied, written in the chunk's own transaction, so a redelivered chunk finds its row
and applies nothing) and ``import_errors`` (the bad records, with their line numbers).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Date, Integer, MetaData, String, Table, Text, create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

PROJECT = Path(__file__).resolve().parents[2]

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("customer", String(200), nullable=False),
    Column("note", Text, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("placed_on", Date, nullable=False),
    Column("import_id", String(64), nullable=False),
)

import_chunks = Table(
    "import_chunks",
    metadata,
    Column("import_id", String(64), primary_key=True),
    Column("chunk", Integer, primary_key=True),
    Column("rows", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
)

import_errors = Table(
    "import_errors",
    metadata,
    Column("import_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("error", Text, nullable=False),
    Column("record", Text, nullable=False),
)

#: Tables an export may read.
EXPORTABLE = {"orders": orders, "import_errors": import_errors}


def database_url() -> str:
    """``DATABASE_URL``, else a SQLite file in the project's ``.iii/``; ``postgresql://`` means psycopg 3."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        (PROJECT / ".iii").mkdir(exist_ok=True)
        return f"sqlite:///{PROJECT / '.iii' / 'data.sqlite'}"
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@functools.cache
def engine() -> Engine:
    """One engine per process (worker processes each make theirs), tables created on first use."""
    url = database_url()
    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(eng, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL: readers (an export) never block the chunk writers; several worker
            # processes write one at a time, each waiting for the lock up to the timeout.
            # synchronous stays FULL: a chunk's message is acked after its commit, so a
            # commit lost to a power cut would be a chunk lost for good.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
    else:
        eng = create_engine(url, pool_pre_ping=True)
    _create_tables(eng)
    return eng


def _create_tables(eng: Engine) -> None:
    # Several processes start at once and each checks then creates: on PostgreSQL the
    # loser of that race gets "already exists", and a second look finds the tables.
    for last in (False, True):
        try:
            metadata.create_all(eng, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            if last:
                raise


def insert(table: Table, conn: Connection) -> Any:
    """``INSERT`` for this dialect, which can skip rows whose key is taken (``ON CONFLICT DO NOTHING``)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def ledger(conn: Connection, import_id: str) -> dict[str, int]:
    """Chunks applied so far for one import, and their rows and errors."""
    row = conn.execute(
        select(
            func.count(), func.coalesce(func.sum(import_chunks.c.rows), 0), func.coalesce(func.sum(import_chunks.c.errors), 0)
        ).where(import_chunks.c.import_id == import_id)
    ).one()
    return {"chunks": int(row[0]), "rows": int(row[1]), "errors": int(row[2])}


def applied_chunks(conn: Connection, import_id: str) -> set[int]:
    return set(conn.execute(select(import_chunks.c.chunk).where(import_chunks.c.import_id == import_id)).scalars())
