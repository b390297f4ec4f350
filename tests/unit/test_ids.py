"""Ids: the text ``uuid.uuid4()`` makes, from read-ahead random bytes that no two processes or threads share."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from iii_console.core import ids


def test_ids_are_version_4_uuids_in_the_texts_uuid4_makes():
    for _ in range(2 * ids.POOL_BYTES // 16 + 3):  # across two refills of the read-ahead
        t, m = ids.trace_id(), ids.message_id()
        assert uuid.UUID(hex=t).version == 4 and uuid.UUID(hex=t).hex == t
        assert uuid.UUID(m).version == 4 and str(uuid.UUID(m)) == m
        assert uuid.UUID(m).variant == uuid.RFC_4122


def test_threads_drawing_at_once_never_get_the_same_bytes():
    got: list[list[bytes]] = [[] for _ in range(8)]

    def draw(out: list[bytes]) -> None:
        for _ in range(5_000):
            out.append(ids.random_bytes16())

    threads = [threading.Thread(target=draw, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [b for out in got for b in out]
    assert len(set(every)) == len(every) == 40_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_hand_out_its_parents_read_ahead():
    """Given a parent that read bytes ahead, when it forks, then the child's next ids are not the parent's next ids."""
    ids.trace_id()  # the parent now holds unread bytes
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next ids and leave at once
        try:
            os.write(w, "".join(ids.trace_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while chunk := os.read(r, 4096):
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = "".join(ids.trace_id() for _ in range(8))
    assert len(child) == len(parent) == 8 * 32
    assert child.decode() != parent
    assert not {child.decode()[i : i + 32] for i in range(0, 256, 32)} & {parent[i : i + 32] for i in range(0, 256, 32)}
