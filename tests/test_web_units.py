"""wachat_async.web's pure pieces, without a server: paths, ETag lists, authorize's leftovers.

The route tests (test_web_paths.py, test_web_authorize.py, test_web_routes.py) drive these
through both frameworks; here are the cases a real server never produces (an ASGI server that
gives no ``raw_path``, a ``__str__`` that raises) and the open-ended ones, with hypothesis.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wachat_async.web._core import _describe, _discard, etag_matches
from wachat_async.web._paths import Miss, Target, body_name, claims_root, locate, shown_name

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param("a.png", Target("png", "a"), id="png"),
        pytest.param("a/events", Target("events", "a"), id="events"),
        pytest.param("a", Target("page", "a"), id="page"),
        pytest.param("a%b", Target("page", "a%b"), id="percent-kept-as-decoded"),
        pytest.param("a/b/events", None, id="three-segments"),
        pytest.param("a/b", None, id="two-segments-not-events"),
    ],
)
def test_without_a_raw_path_the_decoded_one_stands_in(tail: str, expected: Target | None) -> None:
    """An ASGI server may omit ``raw_path``: then every ``/`` separates, nothing is decoded
    twice, and what is no route is still a Miss."""
    got = locate(None, tail)
    if expected is None:
        assert isinstance(got, Miss)
        assert "no such route" in got.message
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("raw", "tail", "claimed"),
    [
        pytest.param(None, "a", True, id="no-raw-page"),
        pytest.param(None, "a/events", True, id="no-raw-events"),
        pytest.param(None, "", False, id="no-raw-root"),
        pytest.param(None, "a/b/c", False, id="no-raw-deeper"),
        pytest.param("/a%2Fb/x", "a/b/x", False, id="two-segments-not-events"),
    ],
)
def test_claims_root(raw: str | None, tail: str, claimed: bool) -> None:
    assert claims_root(raw, tail) is claimed


@given(st.text(min_size=1, max_size=40))
def test_any_name_written_as_one_segment_is_found_again(name: str) -> None:
    """quote(name, safe="") as the segment: every route gives back the very name (or refuses
    it as not UTF-8, for lone surrogates, which cannot be encoded)."""
    try:
        segment = quote(name, safe="")
    except UnicodeEncodeError:
        return
    for raw, tail, expected in (
        (f"/qr/{segment}.png", f"{name}.png", Target("png", name)),
        (f"/qr/{segment}/events", f"{name}/events", Target("events", name)),
        (f"/qr/{segment}", name, Target("page", name)),
    ):
        if expected.route == "page" and segment.endswith(".png"):
            expected = Target("png", name.removesuffix(".png"))  # the PNG route's shape wins
        assert locate(raw, tail) == expected, raw


@given(st.text(max_size=300), st.integers(min_value=1, max_value=300))
def test_names_in_logs_and_bodies_are_bounded(name: str, limit: int) -> None:
    """A shown name never carries more than its first characters; a body name is the name
    itself up to the cap."""
    shown = shown_name(name)
    assert len(shown) <= 64 * 6 + 40
    if len(name) <= 64:
        assert shown == repr(name)
    cut = body_name(name, limit)
    assert cut == name if len(name) <= limit else cut == name[:limit] + "\u2026"


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        pytest.param(None, False, id="absent"),
        pytest.param(f'"a" , "{SHA}"', True, id="space-before-comma"),
        pytest.param('"a" ,, ', False, id="trailing-commas"),
        pytest.param('"a" "b"', False, id="missing-comma"),
        pytest.param("W/", False, id="weak-alone"),
        pytest.param(f'\t"{SHA}"\t', True, id="tabs"),
    ],
)
def test_etag_list_edges(header: str | None, matches: bool) -> None:
    assert etag_matches(header, SHA) is matches


@given(st.lists(st.text(alphabet="abcdef0123456789,", max_size=8), max_size=5), st.booleans())
def test_our_tag_in_any_list_matches(others: list[str], weak: bool) -> None:
    """Our tag anywhere in a list of other quoted tags (commas inside them included)."""
    ours = f'W/"{SHA}"' if weak else f'"{SHA}"'
    tags = [f'"{o}"' for o in others if o != SHA]
    for at in range(len(tags) + 1):
        header = ", ".join([*tags[:at], ours, *tags[at:]])
        assert etag_matches(header, SHA)
    assert not etag_matches(", ".join(tags), SHA)


async def test_discard_leaves_nothing_to_complain_about() -> None:
    """A cancelled future is left as it is; an awaitable without ``close`` (or whose close
    raises) is dropped quietly."""
    loop = asyncio.get_running_loop()
    cancelled = loop.create_future()
    cancelled.cancel()
    _discard(cancelled)
    assert cancelled.cancelled()

    class Bare:
        def __await__(self) -> Any:
            yield

    class BadClose(Bare):
        def close(self) -> None:
            raise RuntimeError("close failed")

    _discard(Bare())
    _discard(BadClose())


def test_describe_survives_a_str_that_raises_and_an_empty_message() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    assert _describe(Unprintable()).endswith("Unprintable: '<str() failed>'")
    assert _describe(RuntimeError()).endswith("RuntimeError: (no message)")


def test_raw_path_of_a_scope() -> None:
    """Starlette's route reads ASGI ``raw_path``; missing or not UTF-8, it has none."""
    from wachat_async.web.starlette import _raw_path

    assert _raw_path({"raw_path": b"/qr/a%2Fb"}) == "/qr/a%2Fb"
    assert _raw_path({}) is None
    assert _raw_path({"raw_path": b"/qr/\xff"}) is None
