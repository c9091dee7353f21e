"""How a ``wachat-qr`` run ends: the exit statuses, the error-to-status map, and the usage error.

The table is in the package docstring (``wachat_async.cli``) and in ``--help``; :data:`EXIT_CODES`
holds every status :func:`wachat_async.cli.main` can return. :class:`UsageError` is a usage
problem found after parsing (a bad names file, no API key, ...): one line, exit status 2;
:class:`Interrupted`, a command stopped by SIGINT or SIGTERM.

Never writes anything, never makes a request, and imports no other module of the CLI: every
other module of it may import this one. The statuses are public as ``wachat_async.cli``'s.
"""

from __future__ import annotations

import signal
from typing import Final

from wachat_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InstanceNotFoundError,
    InvalidResponseError,
    QRExpiredError,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from wachat_async.doctor import Cause

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_NOT_FOUND: Final = 4
EXIT_UPSTREAM: Final = 5
EXIT_CONNECTION: Final = 6
EXIT_INVALID: Final = 7
EXIT_FILE: Final = 8
EXIT_EXPIRED: Final = 9  # watch --max-qrs / --linking-timeout reached, not linked
EXIT_INTERNAL: Final = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT (Ctrl-C)
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM: what systemd, Kubernetes and `timeout` send
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE: what a shell reports for `cat` or `grep`

#: Every exit status main() can return (the table in the package docstring).
EXIT_CODES: Final = frozenset(
    {
        EXIT_OK,
        EXIT_FAILED,
        EXIT_USAGE,
        EXIT_AUTH,
        EXIT_NOT_FOUND,
        EXIT_UPSTREAM,
        EXIT_CONNECTION,
        EXIT_INVALID,
        EXIT_FILE,
        EXIT_EXPIRED,
        EXIT_INTERNAL,
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        EXIT_BROKEN_PIPE,
    }
    | {cause.exit_status for cause in Cause}  # doctor's, 10 to 24
)


#: How the client's note on a 404 from a base URL that does not end in /api/v1 begins.
BASE_URL_NOTE: Final = "is the base URL right?"


def wrong_base_url(error: BaseException | None) -> bool:
    """Whether *error* is a 404 for the route rather than for the instance: the client noted
    that the base URL does not end in ``/api/v1``, or the server said "No such route" (the
    fake server's answer to an unknown path). A configuration error then, not a missing
    instance: exit 2, and every other request would fail the same way."""
    if not isinstance(error, InstanceNotFoundError):
        return False
    notes = getattr(error, "__notes__", ())
    return any(str(note).startswith(BASE_URL_NOTE) for note in notes) or (
        "no such route" in error.body.lower()
    )


def fails_every_request(error: BaseException | None) -> bool:
    """Whether every other request would fail as this one did: a 401/403 (the key) or a wrong
    base URL. A fleet command stops at once then."""
    return isinstance(error, (AuthenticationError, SubscriptionRestrictedError)) or wrong_base_url(
        error
    )


def exit_code_for(error: WachatError) -> int:
    """The exit status for *error* (see the table in the package docstring)."""
    if isinstance(error, (ConfigurationError, ValueError)):  # InvalidInstanceNameError too
        return EXIT_USAGE
    if wrong_base_url(error):
        return EXIT_USAGE
    if isinstance(error, QRExpiredError):
        return EXIT_EXPIRED
    if isinstance(error, (AuthenticationError, SubscriptionRestrictedError)):
        return EXIT_AUTH
    if isinstance(error, (InstanceNotFoundError, QRNotSupportedError, BadRequestError)):
        return EXIT_NOT_FOUND
    if isinstance(error, APIStatusError):
        return EXIT_UPSTREAM
    if isinstance(error, (WachatConnectionError, WachatTimeoutError)):
        return EXIT_CONNECTION
    if isinstance(error, InvalidResponseError):
        return EXIT_INVALID
    return EXIT_FAILED


class Interrupted(Exception):
    """A signal stopped the command: SIGINT (Ctrl-C, exit 130) or SIGTERM (exit 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__("interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)")
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED


class UsageError(Exception):
    """A usage problem found after parsing (bad names file, ...): one line, exit status 2.

    *hint*, when given, is printed on a second line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
