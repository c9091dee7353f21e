"""Fault values (``wachat_async.testing._faults``): validation, equality, repr, script entries."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from wachat_async.testing import Conditions, Fault
from wachat_async.testing._faults import as_fault, bad_header_text, misbehaviour


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"status": 99}, ValueError),
        ({"status": 600}, ValueError),
        ({"status": True}, ValueError),
        ({"delay": -1}, ValueError),
        ({"delay": float("nan")}, ValueError),
        ({"delay": "1"}, TypeError),
        ({"retry_after": "1\r\nX-Evil: 1"}, ValueError),
        ({"retry_after": 2}, TypeError),
        ({"content_type": "text/html\n"}, ValueError),
        ({"body": "text"}, TypeError),
        ({"headers": [("a", "b")]}, TypeError),
        ({"headers": {"X-A": 1}}, TypeError),
        ({"headers": {"Bad:Name": "v"}}, ValueError),
        ({"headers": {"": "v"}}, ValueError),
        ({"headers": {"X-A": "v\r\nX-B: w"}}, ValueError),
        ({"headers": {"X-A": "v\x00"}}, ValueError),
        ({"truncate": 1}, TypeError),
        ({"truncate": True, "drop": True}, ValueError),
        ({"drop": True, "hang": True}, ValueError),
        ({"truncate": True, "hang": True}, ValueError),
    ],
    ids=[
        "status-too-low",
        "status-too-high",
        "status-bool",
        "negative-delay",
        "nan-delay",
        "str-delay",
        "crlf-retry-after",
        "int-retry-after",
        "newline-content-type",
        "str-body",
        "headers-not-mapping",
        "header-value-not-str",
        "colon-in-header-name",
        "empty-header-name",
        "crlf-header-value",
        "nul-header-value",
        "int-flag",
        "truncate-and-drop",
        "drop-and-hang",
        "truncate-and-hang",
    ],
)
def test_fault_validates_fields(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    """Impossible or header-injecting faults are refused at construction."""
    with pytest.raises(exc):
        Fault(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"status": 200}, {"status": 599, "delay": 0}, {"delay": 1.5, "retry_after": ""}],
    ids=["default", "explicit-200", "edge-status-int-delay", "float-delay-empty-retry-after"],
)
def test_fault_accepts_the_edges(kwargs: dict[str, Any]) -> None:
    """The documented bounds themselves are accepted and kept as given."""
    fault = Fault(**kwargs)
    assert {k: getattr(fault, k) for k in kwargs} == kwargs


def test_fault_is_hashable_and_repr_hides_body() -> None:
    """Faults are frozen values; the repr shows the body's size, not its bytes."""
    fault = Fault(status=502, body=b"secret-ish bytes", headers={"X-A": "1"})
    assert hash(fault) == hash(Fault(status=502, body=b"secret-ish bytes"))
    assert "<16 bytes>" in repr(fault)
    assert "secret-ish" not in repr(fault)


def test_fault_headers_are_a_frozen_copy() -> None:
    """Changing the dict a fault was made from changes nothing in the fault."""
    given = {"X-A": "1"}
    fault = Fault(headers=given)
    given["X-A"] = "2"
    with pytest.raises(TypeError):
        fault.headers["X-B"] = "3"  # type: ignore[index]
    assert dict(fault.headers) == {"X-A": "1"}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(), None),
        (Fault(status=502, delay=1), None),
        (Fault(truncate=True), "truncate"),
        (Fault(drop=True), "drop"),
        (Fault(hang=True), "hang"),
    ],
    ids=["normal", "status-and-delay", "truncate", "drop", "hang"],
)
def test_misbehaviour_names_the_one_flag_set(fault: Fault, expected: str | None) -> None:
    """misbehaviour() names the transport misbehaviour a fault asks for, or None."""
    assert misbehaviour(fault) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [(502, Fault(status=502)), (200, Fault()), (Fault(drop=True), Fault(drop=True))],
    ids=["int-status", "int-200", "fault-kept"],
)
def test_script_entries_become_faults(entry: int | Fault, expected: Fault) -> None:
    """An int is Fault(status=n); a Fault is kept as it is."""
    assert as_fault(entry) == expected


@pytest.mark.parametrize("entry", ["502", 502.0, True, None], ids=["str", "float", "bool", "none"])
def test_script_entries_are_ints_or_faults_only(entry: object) -> None:
    """Anything else is a TypeError naming the entry."""
    with pytest.raises(TypeError, match="script entries"):
        as_fault(entry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "bad"),
    [("plain", False), ("", False), ("a\rb", True), ("a\nb", True), ("a\x00b", True)],
    ids=["plain", "empty", "cr", "lf", "nul"],
)
def test_bad_header_text_spots_line_breaks_and_nul(text: str, bad: bool) -> None:
    """CR, LF and NUL are what could end a header line or the header block."""
    assert bad_header_text(text) is bad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"rate_limit": 0}, "rate_limit must be a number > 0", id="zero-rate"),
        pytest.param({"rate_limit": math.inf}, "rate_limit must be", id="infinite-rate"),
        pytest.param({"rate_limit": True}, "rate_limit must be", id="bool-rate"),
        pytest.param({"retry_after": -1}, "retry_after must be an int >= 0", id="negative-ra"),
        pytest.param({"retry_after": 1.5}, "retry_after must be an int", id="float-ra"),
        pytest.param({"outage": -1}, "outage must be a finite number >= 0", id="negative-outage"),
        pytest.param({"share_502": 1.1}, "share_502 must be a share from 0 to 1", id="share>1"),
        pytest.param({"share_hang": -0.1}, "share_hang must be a finite", id="negative-share"),
        pytest.param({"share_502": 0.6, "share_hang": 0.5}, "must not be over 1", id="sum>1"),
    ],
)
def test_conditions_validate_fields(kwargs: dict[str, Any], message: str) -> None:
    """Each impossible condition is refused when made, naming the field and its bound."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Conditions(**kwargs)


def test_conditions_accept_the_edges() -> None:
    """The bounds themselves are allowed: a zero Retry-After and shares adding up to 1."""
    conditions = Conditions(rate_limit=0.5, retry_after=0, share_502=0.5, share_hang=0.5)
    assert conditions.share_502 + conditions.share_hang == 1
