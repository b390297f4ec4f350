"""What a report is about: orders in a period, from ``REPORTS_DATABASE_URL`` or a small seeded SQLite.

The query reads an ``orders`` table with ``customer``, ``amount_cents`` and ``placed_on``:
the one the data example imports into (point ``REPORTS_DATABASE_URL`` at its database), or,
by default, ``.iii/reports.sqlite``, seeded on first use with a year of made-up orders.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import BigInteger, Column, Date, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.engine import Engine

PROJECT = Path(__file__).resolve().parents[2]
metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("customer", String(200), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("placed_on", Date, nullable=False),
)
CUSTOMERS = [
    "Acme GmbH",
    "Zoë's Bakery",
    "Nordlicht AS",
    "Café Lumière",
    "Kowalski & Syn",
    "Blue Harbor Ltd",
    "Tanaka Shōten",
    "Ñandú Viajes",
]


@dataclass(frozen=True)
class Sales:
    start: dt.date
    end: dt.date
    orders: int
    total_cents: int
    by_day: list[tuple[dt.date, int]] = field(default_factory=list)
    top_customers: list[tuple[str, int, int]] = field(default_factory=list)


@functools.cache
def engine() -> Engine:
    url = os.environ.get("REPORTS_DATABASE_URL", "").strip()
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url:
        return create_engine(url)
    (PROJECT / ".iii").mkdir(exist_ok=True)
    eng = create_engine(f"sqlite:///{PROJECT / '.iii' / 'reports.sqlite'}", connect_args={"timeout": 30})
    # Two first builds at once (two worker processes) would both find no table or an empty one,
    # and the second's CREATE or INSERT would fail: the seed runs under a file lock.
    with open(PROJECT / ".iii" / "reports.sqlite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seed(eng)
    return eng


def seed(eng: Engine, year: int = 2026, per_day: int = 12) -> None:
    """A year of orders, the same every time (a fixed random seed), once."""
    metadata.create_all(eng)
    with eng.begin() as conn:
        if conn.execute(select(func.count()).select_from(orders)).scalar_one():
            return
        rnd = random.Random(year)
        day, rows, oid = dt.date(year, 1, 1), [], 1
        while day.year == year:
            weekend = day.weekday() >= 5
            for _ in range(rnd.randrange(per_day // 3, per_day) if weekend else rnd.randrange(per_day, per_day * 2)):
                rows.append(
                    {"id": oid, "customer": rnd.choice(CUSTOMERS), "amount_cents": rnd.randrange(500, 250_000), "placed_on": day}
                )
                oid += 1
            day += dt.timedelta(days=1)
        conn.execute(insert(orders), rows)


def query(start: dt.date, end: dt.date) -> Sales:
    """Totals, revenue per day and the five best customers, ``start`` to ``end`` inclusive."""
    in_period = orders.c.placed_on.between(start, end)
    with engine().connect() as conn:
        count, total = conn.execute(
            select(func.count(), func.coalesce(func.sum(orders.c.amount_cents), 0)).where(in_period)
        ).one()
        by_day = conn.execute(
            select(orders.c.placed_on, func.sum(orders.c.amount_cents))
            .where(in_period)
            .group_by(orders.c.placed_on)
            .order_by(orders.c.placed_on)
        ).all()
        top = conn.execute(
            select(orders.c.customer, func.count(), func.sum(orders.c.amount_cents))
            .where(in_period)
            .group_by(orders.c.customer)
            .order_by(func.sum(orders.c.amount_cents).desc())
            .limit(5)
        ).all()
    return Sales(
        start, end, int(count), int(total), [(_date(d), int(c)) for d, c in by_day], [(str(c), int(n), int(s)) for c, n, s in top]
    )


def _date(value: object) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def money(cents: int) -> str:
    return f"{cents // 100:,}.{cents % 100:02d}"
