"""Argument checks (``_validate.py``): the one number validator, the timeout rule, flags.

The instance-name, key and user-agent checks are specified where users meet them (test_urls.py
and test_client.py); the loopback rule in test_units.py.
"""

from __future__ import annotations

import math

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wachat_async._validate import (
    check_bool,
    check_number,
    check_timeout,
    check_user_agent,
    shown,
)

from .conftest import KEY


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [
        pytest.param(1, {"integer": True, "minimum": 1}, id="int-at-minimum"),
        pytest.param(0.0, {}, id="zero-float"),
        pytest.param(0.5, {"below": 1}, id="below"),
        pytest.param(math.inf, {"infinite": True}, id="infinite-allowed"),
        pytest.param(1e-9, {"exclusive": True}, id="just-above-exclusive"),
    ],
)
def test_numbers_in_range_are_returned_unchanged(value: float, kwargs: dict[str, object]) -> None:
    """A number that meets the rule comes back as it is (same object)."""
    assert check_number(value, "x", **kwargs) is value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        pytest.param(True, {}, TypeError, "got a bool", id="bool-is-no-number"),
        pytest.param("5", {}, TypeError, "got a str", id="str"),
        pytest.param(None, {}, TypeError, "got a NoneType", id="none"),
        pytest.param(1.0, {"integer": True}, TypeError, "an int", id="float-for-int"),
        pytest.param(-1, {}, ValueError, "got -1", id="negative"),
        pytest.param(0, {"exclusive": True}, ValueError, "> 0", id="zero-exclusive"),
        pytest.param(1, {"below": 1}, ValueError, "< 1", id="at-upper-bound"),
        pytest.param(math.nan, {}, ValueError, "got nan", id="nan"),
        pytest.param(math.inf, {}, ValueError, "finite", id="infinite"),
        pytest.param(-math.inf, {"infinite": True}, ValueError, ">= 0", id="minus-infinity"),
        pytest.param(63, {"integer": True, "minimum": 64}, ValueError, ">= 64", id="under-min"),
        pytest.param("x", {"type_error": ValueError}, ValueError, "got a str", id="type-error"),
    ],
)
def test_numbers_out_of_rule_are_refused_with_the_rule(
    value: object, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Wrong types raise TypeError, values out of range ValueError; both name the field and
    the rule."""
    with pytest.raises(error, match=message) as info:
        check_number(value, "field", **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith("field must be ")


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10))
def test_check_number_agrees_with_the_comparison(value: float, minimum: float) -> None:
    """For any float, check_number accepts exactly the finite values >= minimum."""
    expected = math.isfinite(value) and value >= minimum
    try:
        check_number(value, "x", minimum=minimum)
    except ValueError:
        assert not expected
    else:
        assert expected


class _Leaky:
    def __repr__(self) -> str:
        return KEY


@pytest.mark.parametrize("value", [KEY, _Leaky(), b"secret"], ids=["str", "repr", "bytes"])
def test_a_refused_value_that_is_no_number_is_named_by_type_only(value: object) -> None:
    """The caller's text never reaches the message (it may be a secret)."""
    with pytest.raises(TypeError) as info:
        check_number(value, "field")
    assert KEY not in str(info.value)
    assert shown(value).startswith("a ")


@pytest.mark.parametrize(
    ("value", "total"),
    [
        pytest.param(3, 3.0, id="int-seconds"),
        pytest.param(0.25, 0.25, id="float-seconds"),
        pytest.param(60, 60.0, id="long"),
    ],
)
def test_seconds_become_a_total_timeout(value: float, total: float) -> None:
    """A number of seconds sets total explicitly, and sock_connect to at most 10 s."""
    timeout = check_timeout(value)
    assert timeout is not None
    assert (timeout.total, timeout.sock_connect) == (total, min(total, 10.0))


def test_a_client_timeout_is_kept_and_none_means_the_default() -> None:
    """An aiohttp.ClientTimeout with a limit is used as given; None leaves the default."""
    given_timeout = aiohttp.ClientTimeout(sock_read=1.0)
    assert check_timeout(given_timeout) is given_timeout
    assert check_timeout(None) is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(aiohttp.ClientTimeout(), ValueError, id="no-limit"),
        pytest.param(0, ValueError, id="zero"),
        pytest.param(math.inf, ValueError, id="infinite"),
        pytest.param(True, TypeError, id="bool"),
        pytest.param("5", TypeError, id="str"),
    ],
)
def test_bad_timeouts_are_refused(value: object, error: type[Exception]) -> None:
    """Every timeout that cannot bound an attempt is refused, naming timeout."""
    with pytest.raises(error, match="timeout"):
        check_timeout(value)


@pytest.mark.parametrize("value", [1, 0, "yes", None], ids=["one", "zero", "str", "none"])
def test_flags_must_be_real_bools(value: object) -> None:
    """A truthy or falsy non-bool is not a flag."""
    with pytest.raises(TypeError, match="flag must be a bool"):
        check_bool(value, "flag")
    assert check_bool(False, "flag") is False


@pytest.mark.parametrize(
    "value", ["my-app/1.0", "a b (c; d)", None], ids=["plain", "spaces", "none"]
)
def test_a_sendable_user_agent_is_kept(value: str | None) -> None:
    """A user agent without control characters is returned as it is (None: the default)."""
    assert check_user_agent(value) == value
