"""The Redis identity store's worker cache, without Redis: what it notes as written."""

from __future__ import annotations

from sinks.identity_redis import _CachedGraph, _Written


def test_every_way_of_writing_a_node_is_noted_in_write_order() -> None:
    d = _Written()
    d["a"] = 1
    d.setdefault("b", 2)
    d.setdefault("a", 9)  # present: not written
    d.update({"c": 3}, e=5)
    d["a"] = 0
    assert dict(d) == {"a": 0, "b": 2, "c": 3, "e": 5}
    assert list(d.written) == ["a", "b", "c", "e"]


def test_the_cached_graph_notes_what_the_resolver_writes() -> None:
    g = _CachedGraph()
    g.add("ukey", 10, {"u"})  # a new identifier: its first-seen time is written
    g.linked["ukey"] = g.linked.get("ukey", 0) + 1  # as IdentityResolver._fold charges a link
    assert list(g.first.written) == ["ukey"] and list(g.linked.written) == ["ukey"]
    assert g.first["ukey"] == 10 and g.linked["ukey"] == 1
