"""Scripted faults: :class:`Fault`, one way for the fake server to misbehave on a QR request.

:class:`Conditions`: what goes wrong for every instance (a rate limit, an outage, a share of
502s or hangs), for rehearsing a fleet against an upstream at its limits.

A fault is a frozen value that says *what* should go wrong (a status, a ``Retry-After``, a body,
a delay, a dropped, hanging or truncated connection), validated when it is made so that a test
cannot script something impossible or smuggle a header. What a fault means for one request is
decided in :mod:`._handlers`; queuing faults per instance is :mod:`._registry`'s job.

This module holds values and their checks only: it never imports aiohttp, the server or the
client, and does no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import attrs

__all__ = ["Conditions", "Fault", "Misbehaviour", "as_fault", "bad_header_text", "misbehaviour"]

#: What a fault can do to the connection instead of answering normally.
Misbehaviour = Literal["truncate", "drop", "hang"]

# Header values must not be able to smuggle a second header or end the header block.
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")


def bad_header_text(text: str) -> bool:
    """Whether *text* holds CR, LF or NUL (it could end a header line or the header block)."""
    return _BAD_HEADER_CHARS.search(text) is not None


def _check_status(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        # A wrong type is named, never quoted (a bytes value would be dumped whole).
        got = repr(value) if type(value) is int else f"a {type(value).__name__}"
        raise ValueError(f"{attribute.name} must be an int HTTP status in 200..599, not {got}")


def _check_delay(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{attribute.name} must be a number of seconds, not a {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _check_header_text(
    _inst: object, attribute: attrs.Attribute[str | None], value: object
) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str or None, not {type(value).__name__}")
    if bad_header_text(value):
        raise ValueError(f"{attribute.name} must not contain CR, LF or NUL: {value!r}")


def _check_body(_inst: object, attribute: attrs.Attribute[bytes | None], value: object) -> None:
    # attrs' instance_of would quote the value (and keep it in the exception's args).
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes or None, not a {type(value).__name__}")


def _check_bool(_inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, not a {type(value).__name__}")


def _freeze_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                "header names and values must be str, not "
                f"{type(name).__name__}: {type(value).__name__}"
            )
        if not name or bad_header_text(name) or ":" in name:
            raise ValueError(f"invalid header name: {name!r}")
        if bad_header_text(value):
            raise ValueError(f"header {name!r} must not contain CR, LF or NUL: {value!r}")
    return MappingProxyType(dict(headers))


def _bytes_repr(value: bytes | None) -> str:
    return "None" if value is None else f"<{len(value)} bytes>"


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted response for :meth:`FakeWachatServer.script`.

    ``status`` other than 200 answers with that status and the API's JSON error body;
    ``status=200`` means "behave normally" (so the instance may still be 404, 403, ...), with the
    other fields applied on top. ``retry_after`` is sent verbatim as ``Retry-After`` (garbage
    included, to test parsers); ``content_type``/``body``/``headers`` override the response;
    ``delay`` waits before answering. At most one transport misbehaviour may be set:
    ``truncate`` (full ``Content-Length``, about half the body, then the connection closes),
    ``drop`` (connection closed without any response) or ``hang`` (no response until the client
    gives up or the server closes).

    Example::

        server.script("t1_abc_store", [Fault(status=502, retry_after="2"), Fault(drop=True)])
    """

    status: int = attrs.field(default=200, validator=_check_status)
    delay: float = attrs.field(default=0.0, validator=_check_delay)
    retry_after: str | None = attrs.field(default=None, validator=_check_header_text)
    content_type: str | None = attrs.field(default=None, validator=_check_header_text)
    body: bytes | None = attrs.field(
        default=None,
        validator=_check_body,
        repr=_bytes_repr,
    )
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_headers, eq=False, hash=False
    )
    truncate: bool = attrs.field(default=False, validator=_check_bool)
    drop: bool = attrs.field(default=False, validator=_check_bool)
    hang: bool = attrs.field(default=False, validator=_check_bool)

    def __attrs_post_init__(self) -> None:
        if self.truncate + self.drop + self.hang > 1:
            raise ValueError("at most one of truncate, drop and hang may be set")


def misbehaviour(fault: Fault) -> Misbehaviour | None:
    """The transport misbehaviour *fault* asks for, if any (at most one can be set)."""
    if fault.truncate:
        return "truncate"
    if fault.drop:
        return "drop"
    if fault.hang:
        return "hang"
    return None


def as_fault(item: int | Fault) -> Fault:
    """A script entry as a :class:`Fault`: an int status *n* is ``Fault(status=n)``."""
    if isinstance(item, Fault):
        return item
    if type(item) is int:
        return Fault(status=item)
    raise TypeError(f"script entries must be int statuses or Fault objects, not {item!r}")


def _check_share(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    _check_delay(_inst, attribute, value)
    if value > 1:
        raise ValueError(f"{attribute.name} must be a share from 0 to 1, not {value!r}")


def _check_rate(_inst: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{attribute.name} must be a number > 0 or None, not {value!r}")


@attrs.frozen(kw_only=True)
class Conditions:
    """What goes wrong for every instance, on the QR requests that no script answers.

    ``outage``: seconds, from when the conditions are set, during which every QR request is
    answered 502. ``rate_limit``: QR requests per second accepted (a token bucket holding one
    second's worth, at least one request); each one above it is answered 429 with
    ``Retry-After: retry_after``.
    ``share_502`` and ``share_hang``: shares (0 to 1) of the other QR requests answered 502
    or left hanging, drawn from a ``random.Random(seed)``.
    """

    rate_limit: float | None = attrs.field(default=None, validator=_check_rate)
    retry_after: int = attrs.field(default=1)
    outage: float = attrs.field(default=0.0, validator=_check_delay)
    share_502: float = attrs.field(default=0.0, validator=_check_share)
    share_hang: float = attrs.field(default=0.0, validator=_check_share)
    seed: int | None = None

    @retry_after.validator
    def _check_retry_after(self, attribute: attrs.Attribute[int], value: object) -> None:
        if type(value) is not int or value < 0:
            raise ValueError(f"retry_after must be an int >= 0 (seconds), not {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.share_502 + self.share_hang > 1:
            raise ValueError("share_502 + share_hang must not be over 1")
