"""Command-line rough edges a new user meets first: dead-letter ids, `send`, a second instance."""

from __future__ import annotations

import json
import socket
import time

import pytest

from iii_console.core.dlq import DeadLetter, DeadLetterStore
from iii_console.core.errors import IIIError
from iii_console.runtime.http_server import listen

from ..helpers import cli_in_process

IDS = ("04f9308c-92aa-4b1e-8c1d-000000000001", "04f9308c-92bb-4b1e-8c1d-000000000002", "77aa0000-0000-4000-8000-000000000003")


@pytest.fixture
def dead_ids(project, r, keys):
    """Three dead letters; the first two share the prefix ``04f9308c-92``."""
    cfg, _steps = project({})
    now = int(time.time() * 1000)
    for n, entry_id in enumerate(IDS):
        e = DeadLetter(
            id=entry_id,
            dlq="orders.dlq",
            topic="orders",
            step="Charge",
            attempts=3,
            trace_id=f"t{n}",
            error="ValidationError: 1 validation error for Order " + "x" * 120 + "\nsku\n  Field required",
            data={"n": n},
            first_failure_ms=now - n,
            last_failure_ms=now - n,
        )
        r.hset(keys.dlq_entries(e.dlq), e.id, e.encode())
        r.zadd(keys.dlq(e.dlq), {e.id: e.last_failure_ms})
        r.sadd(keys.dlq_names, e.dlq)
    return cfg, DeadLetterStore(r, keys)


def test_dlq_list_piped_keeps_whole_ids_and_show_replay_purge_take_a_unique_prefix(dead_ids):
    """Given three dead letters with long errors, when listed to a pipe and named by prefixes, then ids are whole and a unique prefix works while a shared one lists its candidates."""
    cfg, store = dead_ids
    out = cli_in_process(cfg, "dlq", "list")
    assert out.returncode == 0
    assert all(i in out.stdout for i in IDS)
    assert len(out.stdout.splitlines()) == 4  # a header and one line per entry, whatever the error holds

    shown = json.loads(cli_in_process(cfg, "dlq", "show", "04f9308c-92a", "--json").stdout)
    assert shown["id"] == IDS[0] and shown["data"] == {"n": 0}
    assert json.loads(cli_in_process(cfg, "dlq", "show", "77aa0000-0000-4…", "--json").stdout)["id"] == IDS[2]

    ambiguous = cli_in_process(cfg, "dlq", "show", "04f9308c-92")
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
    assert IDS[0] in ambiguous.stderr and IDS[1] in ambiguous.stderr and IDS[2] not in ambiguous.stderr
    missing = cli_in_process(cfg, "dlq", "show", "ffff")
    assert missing.returncode == 2 and "no dead letter 'ffff'" in missing.stderr

    dry = cli_in_process(cfg, "dlq", "replay", "04f9308c-92b", "--dry-run")
    assert dry.returncode == 0 and f"would replay {IDS[1]}" in dry.stdout
    assert cli_in_process(cfg, "dlq", "purge", "04f9308c-92", "--yes").returncode == 2  # ambiguous: nothing purged
    assert store.count("orders.dlq") == 3
    assert cli_in_process(cfg, "dlq", "purge", "77aa", "--yes").returncode == 0
    assert {e.id for e in store.list()} == set(IDS[:2])


def test_a_second_server_on_a_port_in_use_points_to_attach(project):
    """Given the configured port already taken (a first `iii-console`), when a second one listens, then the error names `iii-console attach`."""
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen(1)
    try:
        cfg, _steps = project({})
        cfg = cfg.with_overrides(**{"server.host": "127.0.0.1", "server.port": first.getsockname()[1]})
        with pytest.raises(IIIError, match=r"address already in use.*iii-console attach"):
            listen(cfg)
    finally:
        first.close()
