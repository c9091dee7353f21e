"""What :func:`wachat_async.doctor.diagnose` returns: frozen values, printable and serialisable.

A :class:`Diagnosis` is the steps (:class:`Step`, one line each: what it found, what to do
next) and the :class:`Cause` they arrived at, which names the exit status ``wachat-qr doctor``
ends with. Pure values: no I/O, and nothing here ever holds the API key.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

__all__ = ["Cause", "Check", "Diagnosis", "Outcome", "Step"]


class Check(enum.StrEnum):
    """The steps of a diagnosis, in the order they run."""

    CONNECTION = "connection"  #: the base URL answers, over TLS that verifies
    KEY = "key"  #: the API key is accepted (401)
    INSTANCE = "instance"  #: the instance exists for this key (404)
    INTEGRATION = "integration"  #: it can have a QR: a Baileys instance (409)
    SUBSCRIPTION = "subscription"  #: the subscription allows QR codes (403)
    STATE = "state"  #: not linked yet (``open``: no QR is needed)
    QR = "qr"  #: a QR PNG comes back (502 that persists, a 200 that is not a PNG)
    DECODE = "decode"  #: the PNG decodes as a QR code (the ``doctor`` extra)
    ROTATION = "rotation"  #: a new QR comes after the rotation period


class Outcome(enum.StrEnum):
    """How one step ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  #: not checked, and why (no decoder; rotation not asked for)
    NOT_RUN = "not run"  #: an earlier step failed, or the instance is linked


class Cause(enum.StrEnum):
    """What the diagnosis found, each with its own exit status (:attr:`exit_status`).

    ``healthy`` (0): a QR comes back and rotates. ``linked`` (10): the phone is already linked,
    no QR is needed. The others say why no QR shows; their statuses (11-24) are those of
    ``wachat-qr doctor`` and collide with none of its other commands'.
    """

    HEALTHY = "healthy"
    LINKED = "linked"
    DNS = "dns"  #: the base URL's host name does not resolve
    REFUSED = "refused"  #: nothing listens at the base URL's host and port
    UNREACHABLE = "unreachable"  #: no answer: a timeout, no route, a proxy in the way
    TLS = "tls"  #: the server's certificate does not verify
    WRONG_BASE_URL = "wrong-base-url"  #: a server answers, but not the API (404 for the route)
    KEY_REJECTED = "key-rejected"  #: 401
    NOT_FOUND = "not-found"  #: 404 for the instance
    NOT_BAILEYS = "not-baileys"  #: 409, or the state's integration says so
    SUBSCRIPTION = "subscription"  #: 403
    UPSTREAM = "upstream"  #: 502/504 that persisted through the retries
    NOT_PNG = "not-png"  #: a 200 whose body is not a PNG
    NOT_QR = "not-qr"  #: a PNG in which no QR code decodes
    NOT_ROTATING = "not-rotating"  #: the same QR after the rotation timeout
    UNEXPECTED = "unexpected"  #: anything else (an undocumented status, a bad state body, ...)

    @property
    def exit_status(self) -> int:
        """The exit status of ``wachat-qr doctor`` for this cause (0 only when healthy)."""
        return _EXIT_STATUS[self]


_EXIT_STATUS: dict[Cause, int] = dict(zip(Cause, (0, *range(10, 25)), strict=True))


@attrs.frozen(kw_only=True)
class Step:
    """One step of a diagnosis: what it found (``found``) and what to do next (``advice``,
    empty when nothing is to be done)."""

    check: Check
    outcome: Outcome
    found: str
    advice: str = ""

    def __str__(self) -> str:
        line = f"{self.outcome:<8} {self.check:<13} {self.found}"
        return f"{line}; {self.advice}" if self.advice else line

    def to_dict(self) -> dict[str, str]:
        """The step as JSON-ready values."""
        return {
            "check": str(self.check),
            "outcome": str(self.outcome),
            "found": self.found,
            "advice": self.advice,
        }


@attrs.frozen(kw_only=True)
class Diagnosis:
    """Why a QR shows or not for one instance: the :class:`Step`\\ s in order (one per
    :class:`Check`) and the :class:`Cause` they found. ``str()`` prints one line per step and
    a last line with the cause; :meth:`to_dict` / :meth:`to_json` give the same as data."""

    instance_name: str
    base_url: str
    cause: Cause
    steps: tuple[Step, ...]

    @property
    def exit_status(self) -> int:
        """The cause's exit status (see :class:`Cause`)."""
        return self.cause.exit_status

    @property
    def failed(self) -> Step | None:
        """The step that failed (``None`` when healthy or linked)."""
        return next((s for s in self.steps if s.outcome is Outcome.FAILED), None)

    def __str__(self) -> str:
        lines = [str(step) for step in self.steps]
        lines.append(f"cause: {self.cause} (exit status {self.exit_status})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The diagnosis as JSON-ready values (what ``wachat-qr doctor --json`` prints)."""
        return {
            "instance": self.instance_name,
            "base_url": self.base_url,
            "cause": str(self.cause),
            "exit_status": self.exit_status,
            "steps": [step.to_dict() for step in self.steps],
        }

    def to_json(self, *, ensure_ascii: bool = True) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=ensure_ascii)
