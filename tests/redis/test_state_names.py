"""State group and key names on real Redis: what a name holds is what it means."""

from __future__ import annotations

from iii_console.core.state import StateStore


def test_glob_characters_in_state_names_are_stored_literally(r, keys):
    """What held up: given groups and keys with *, ? and [...] in them, when read back, then each name means itself and matches no other."""
    store = StateStore(r, keys, trace_id="t", step="test")
    store.set("a*", "k?", {"v": 1})
    store.set("ab", "kk", {"v": 2})
    store.set("[ab]", "*", {"v": 3})
    assert sorted(store.groups()) == sorted(["a*", "ab", "[ab]"])
    assert store.list("a*") == {"k?": {"v": 1}} and store.list("[ab]") == {"*": {"v": 3}}
    assert store.get("a*", "kk") is None and store.get("[ab]", "x") is None and store.get("a*", "k?") == {"v": 1}
