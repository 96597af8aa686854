from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.chain import GENESIS, ChainChecker, canonical, link


def build(contents: list[str]) -> list[tuple[int, str, bytes]]:
    prev, out = GENESIS, []
    for seq, content in enumerate(contents, start=1):
        prev = link(prev, seq, content)
        out.append((seq, content, prev))
    return out


def check(events: list[tuple[int, str, bytes]], head: tuple[int, bytes]) -> ChainChecker:
    checker = ChainChecker()
    for seq, content, digest in events:
        checker.feed(seq, content, digest)
    checker.finish(*head)
    return checker


def test_link_is_sha256_of_prev_seq_and_content() -> None:
    expected = hashlib.sha256(GENESIS + (1).to_bytes(8, "big") + b'{"a":1}').digest()
    assert link(GENESIS, 1, '{"a":1}') == expected


#: what events and command documents hold: strings (any Unicode but lone surrogates, control
#: characters included), bigint-range integers, booleans, null, lists and objects
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_json: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(_text, _json, max_size=6))
def test_canonical_is_the_standard_librarys_sorted_compact_json(document: dict[str, Any]) -> None:
    """The chain's bytes must not depend on which encoder made them."""
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical(document) == expected
    assert json.loads(canonical(document)) == document


def test_canonical_sorts_keys_and_drops_spaces() -> None:
    assert canonical({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'


contents = st.lists(st.text(max_size=20), min_size=3, max_size=30)


@given(contents)
def test_an_untouched_chain_verifies(items: list[str]) -> None:
    events = build(items)
    assert check(events, (len(items), events[-1][2])).first_break is None


@given(contents, st.data())
def test_a_changed_event_is_reported_at_its_seq(items: list[str], data: st.DataObject) -> None:
    events = build(items)
    i = data.draw(st.integers(0, len(items) - 1))
    seq, content, digest = events[i]
    events[i] = (seq, content + "!", digest)
    broke = check(events, (len(items), events[-1][2])).first_break
    assert broke is not None and broke.seq == seq


@given(contents, st.data())
def test_a_deleted_event_is_reported_at_its_seq(items: list[str], data: st.DataObject) -> None:
    events = build(items)
    i = data.draw(st.integers(0, len(items) - 1))
    head = (len(items), events[-1][2])
    del events[i]
    broke = check(events, head).first_break
    assert broke is not None and broke.seq == i + 1


def test_an_appended_event_with_a_valid_link_is_caught_by_the_head() -> None:
    events = build(["a", "b", "c"])
    head = (3, events[-1][2])
    events.append((4, "forged", link(events[-1][2], 4, "forged")))
    broke = check(events, head).first_break
    assert broke is not None and broke.seq == 4
