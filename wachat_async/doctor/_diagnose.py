""":func:`diagnose`: why a QR shows or not, step by step, on the client's public calls only.

Two requests give most of the facts: ``GET /instance/state`` (the base URL, the key, the
instance, its integration and state), then, unless the phone is linked, the QR image (409,
403, the PNG). The steps are then walked in order; a step is ``ok`` only when an answer showed
it (else ``unknown``), the first that fails names the cause and the rest are not run. Decoding
the PNG needs the ``doctor`` extra (zxing-cpp, Pillow) and runs off the event loop; checking
that the QR rotates polls it again, within ``rotation_timeout`` on *clock*.
"""

from __future__ import annotations

import asyncio
import errno
import io
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

from yarl import URL

from wachat_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InstanceState,
    InvalidImageError,
    InvalidInstanceNameError,
    InvalidResponseError,
    ProxyError,
    QRFetchFailedError,
    QRImage,
    QRNotSupportedError,
    ResponseTooLargeError,
    SubscriptionRestrictedError,
    TLSVerificationError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

from ._report import Cause, Check, Diagnosis, Outcome, Step

__all__ = [
    "DEFAULT_ROTATION_TIMEOUT",
    "INSTALL_HINT",
    "MAX_DECODE_PIXELS",
    "MIN_ROTATION_TIMEOUT",
    "ROTATION_POLL",
    "diagnose",
]

#: How long :func:`diagnose` waits for a new QR by default (WhatsApp rotates them about every
#: 20 s).
DEFAULT_ROTATION_TIMEOUT: Final = 45.0
#: A shorter rotation timeout cannot tell a stuck QR from one not due yet: no verdict then.
MIN_ROTATION_TIMEOUT: Final = 25.0
#: Seconds between the QR requests of the rotation step.
ROTATION_POLL: Final = 2.0
#: The largest PNG the ``decode`` step reads (4096 x 4096 pixels, from the PNG header): a QR
#: image is far smaller, and a larger one could take gigabytes to decode.
MAX_DECODE_PIXELS: Final = 4096 * 4096
#: How to install the QR decoder the ``decode`` step uses.
INSTALL_HINT: Final = (
    "pip install -e '.[doctor]' in the wachat-async clone (zxing-cpp and Pillow) to check it"
)
BAILEYS: Final = "WHATSAPP-BAILEYS"

#: Errors that are the caller's own (a bad name, a closed client): raised, not diagnosed.
_RAISED = (InvalidInstanceNameError, ClientClosedError, ConfigurationError)
#: The checks a failure belongs to whichever request met it; others fail the request's step.
_HOME: Final = {
    Cause.DNS: Check.CONNECTION,
    Cause.REFUSED: Check.CONNECTION,
    Cause.UNREACHABLE: Check.CONNECTION,
    Cause.TLS: Check.CONNECTION,
    Cause.PROXY: Check.CONNECTION,
    Cause.WRONG_BASE_URL: Check.CONNECTION,
    Cause.KEY_REJECTED: Check.KEY,
    Cause.NOT_FOUND: Check.INSTANCE,
    Cause.NOT_BAILEYS: Check.INTEGRATION,
    Cause.SUBSCRIPTION: Check.SUBSCRIPTION,
}
#: What an API answer of each cause shows besides: the checks the API made before it.
_SHOWS: Final = {
    Cause.NOT_FOUND: (Check.KEY,),
    Cause.NOT_BAILEYS: (Check.KEY, Check.INSTANCE),
    Cause.SUBSCRIPTION: (Check.KEY,),
}
#: The text of a check an answer showed.
_SHOWN: Final = {
    Check.KEY: "the API key is accepted",
    Check.INSTANCE: "{name!r} exists for this key",
}
#: Failures the rotation step polls through (within its timeout) rather than report at once.
_PASSING: Final = frozenset({Cause.UNREACHABLE, Cause.UPSTREAM, Cause.RATE_LIMITED})


class _Stop(NamedTuple):
    """A step that ends the walk: a failure, or (``linked``) the phone already linked."""

    cause: Cause
    found: str
    advice: str
    outcome: Outcome = Outcome.FAILED


_LINKED: Final = _Stop(
    Cause.LINKED,
    "'open': the phone is already linked",
    "no QR is needed (to link another phone, log this one out first)",
    Outcome.OK,
)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return True
    # Every address refused (localhost's ::1 and 127.0.0.1): one OSError naming them all.
    return type(exc) is OSError and f"[Errno {errno.ECONNREFUSED}]" in str(exc)


def _connection_cause(error: WachatError) -> Cause:
    chain = _chain(error)
    if any(isinstance(exc, ProxyError) for exc in chain):
        return Cause.PROXY
    if any(isinstance(exc, TLSVerificationError) for exc in chain):
        return Cause.TLS
    names = {type(exc).__name__ for exc in chain} | {str(exc).split(":")[0] for exc in chain}
    if "ClientConnectorDNSError" in names or any(
        isinstance(exc, OSError) and exc.errno is not None and exc.errno < 0 for exc in chain
    ):  # aiohttp's DNS error, or socket.gaierror (negative EAI_* codes)
        return Cause.DNS
    if any(_refused(exc) for exc in chain):
        return Cause.REFUSED
    if _plain_http(error) or "ClientResponseError" in names:  # an answer that is not HTTP
        return Cause.WRONG_BASE_URL
    return Cause.UNREACHABLE


def _plain_http(error: WachatError) -> bool:
    """TLS spoken to a port that answers plain HTTP (OpenSSL's ``WRONG_VERSION_NUMBER``)."""
    return any("WRONG_VERSION_NUMBER" in str(exc) for exc in _chain(error))


def _html(body: str) -> bool:
    return body.lstrip().startswith("<")


def cause_of(error: WachatError) -> Cause:
    """The :class:`Cause` an error of a client call points to."""
    if isinstance(error, (WachatConnectionError, WachatTimeoutError)):
        return _connection_cause(error)
    if isinstance(error, APIStatusError) and error.status == 429:  # RateLimitError too
        return Cause.RATE_LIMITED
    if isinstance(error, AuthenticationError):
        return Cause.KEY_REJECTED
    if isinstance(error, InstanceNotFoundError):
        # The API's 404 is JSON naming the instance; a web page, or "No such route", is a
        # server that is not the API (or not at this path).
        notes = " ".join(getattr(error, "__notes__", ()))
        route = "is the base URL right?" in notes or "no such route" in error.body.lower()
        return Cause.WRONG_BASE_URL if route or _html(error.body) else Cause.NOT_FOUND
    if isinstance(error, QRNotSupportedError):
        return Cause.NOT_BAILEYS
    if isinstance(error, SubscriptionRestrictedError):
        return Cause.SUBSCRIPTION
    if isinstance(error, (QRFetchFailedError, GatewayTimeoutError)):
        return Cause.UPSTREAM
    if isinstance(error, InvalidImageError) and error.truncated:
        return Cause.UNREACHABLE  # the connection dropped mid-body: a transport fault
    if isinstance(error, (InvalidImageError, ResponseTooLargeError)):
        return Cause.NOT_PNG
    return Cause.UNEXPECTED  # an undocumented status, a state body that does not parse, ...


def _said(error: WachatError, cause: Cause, name: str, base: URL) -> tuple[str, str]:
    """What was found, and what to do, for *error* of *cause*."""
    where = f"{base.host}:{base.port}"
    attempts = f" after {error.attempts} attempts" if error.attempts > 1 else ""
    status = getattr(error, "status", None)
    body = getattr(error, "body", "")
    reason = next((e.reason for e in _chain(error) if isinstance(e, TLSVerificationError)), "")
    retry_after = getattr(error, "retry_after", None)
    wait = f"wait {math.ceil(retry_after)} s" if retry_after is not None else "wait a minute"
    if cause is Cause.TLS and "mismatch" in reason.lower():
        return (
            f"the certificate of {where} is for another host name: {reason}",
            "use the host name the certificate names in the base URL, or fix the server's "
            "certificate (trusting another CA will not help)",
        )
    if cause is Cause.TLS and "expired" in reason.lower():
        return (
            f"the certificate of {where} has expired: {reason}",
            "the server must renew it (or this machine's clock is wrong)",
        )
    if cause is Cause.WRONG_BASE_URL and isinstance(error, WachatConnectionError):
        if _plain_http(error):
            return (
                f"https:// to {where}, but this port speaks plain HTTP",
                "use http:// for a loopback test server, or the right port",
            )
        return (
            f"something that is not an HTTP server answers at {where}",
            "check the base URL's host and port (another service's port?)",
        )
    if cause is Cause.WRONG_BASE_URL and _html(body):
        return (
            f"a 404 web page, not the API's answer: {base} is not the API",
            "the base URL is the API root, ending in /api/v1 (check its host too)",
        )
    if cause is Cause.UNREACHABLE and isinstance(error, InvalidImageError):
        return (
            f"the answer was cut short mid-transfer{attempts}: the connection dropped",
            "a transient fault on the way (network, proxy, a server restart): run doctor again",
        )
    if cause is Cause.UNEXPECTED and isinstance(error, InvalidResponseError):
        return (
            f"a 200 that is not the API's answer: {error}",
            "something else answers for Wachat (a sign-in page, a proxy?): check the base URL",
        )
    if cause is Cause.UNEXPECTED and isinstance(error, BadRequestError):
        named = "instancename" in body.lower()
        return (
            f"400: the server refused the {'instance name' if named else 'request'}: "
            + (body or "no reason given")
            + ("" if named else " (it does not mention the instance name)"),
            "check the name" if named else "check the key (its length?) and the base URL",
        )
    said = {
        Cause.DNS: (
            f"the host name {base.host!r} does not resolve (DNS)",
            "check the base URL's host (WACHAT_BASE_URL, --base-url) and this machine's DNS",
        ),
        Cause.REFUSED: (
            f"{where} refused the connection: nothing listens there",
            "check the base URL's host and port, and that the server is running",
        ),
        Cause.UNREACHABLE: (
            f"no answer from {where}{attempts}: {error}",
            "check the network or a firewall on the way, then run doctor again",
        ),
        Cause.PROXY: (
            f"{error}{attempts}",
            "check the proxy (HTTPS_PROXY / HTTP_PROXY, --proxy): is it running, is its name "
            "and port right? NO_PROXY or --no-env-proxy bypass it",
        ),
        Cause.TLS: (
            f"the certificate of {where} does not verify: {reason or error}",
            "trust its CA (--ca-file FILE, ssl= in code, SSL_CERT_FILE), never verification off",
        ),
        Cause.WRONG_BASE_URL: (
            f"a server answers, but 404 for the route itself: {base} is not the API",
            "the base URL is the API root, ending in /api/v1",
        ),
        Cause.KEY_REJECTED: (
            "401: the API key is refused",
            "set WACHAT_API_KEY to a valid key of the account that owns the instance",
        ),
        Cause.NOT_FOUND: (
            f"404: no instance {name!r} for this key",
            "use the full API name (apiInstanceName, e.g. t1_mq9r2jov_store) and its owner's key",
        ),
        Cause.NOT_BAILEYS: (
            f"409: {name!r} is not a WhatsApp Baileys instance, and only those have a QR",
            "link it the way its integration says, or create a WHATSAPP-BAILEYS instance",
        ),
        Cause.SUBSCRIPTION: (
            "403: the subscription does not allow QR codes",
            "check the account's plan and its limits with Wachat",
        ),
        Cause.UPSTREAM: (
            f"{status}: Wachat could not produce the QR{attempts}",
            "an upstream fault: run doctor again in a minute; if it stays, restart the instance",
        ),
        Cause.NOT_PNG: (
            f"a 200 that is not a PNG QR image: {error}",
            "something else answers for Wachat (a proxy, a gateway?): check the base URL",
        ),
        Cause.RATE_LIMITED: (f"429: rate limited by the API; {wait}", "then run doctor again"),
    }
    return said.get(
        cause, (f"{type(error).__name__}: {error}", "run doctor again; if it stays, report it")
    )


def _stop(error: WachatError, name: str, base: URL) -> _Stop:
    """What to say of *error* (met asking about instance *name* at *base*)."""
    cause = cause_of(error)
    return _Stop(cause, *_said(error, cause, name, base))


def _decode(png: bytes) -> int | None:
    """How many characters the QR code in *png* holds (``None``: no QR code in it); raises
    ImportError without the ``doctor`` extra, and whatever Pillow raises for broken data."""
    import zxingcpp
    from PIL import Image

    with Image.open(io.BytesIO(png)) as picture:
        picture.load()
        found = zxingcpp.read_barcodes(picture)
    codes = [code for code in found if code.format == zxingcpp.BarcodeFormat.QRCode]
    return len(codes[0].text) if codes else None


def _check_timeout(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"rotation_timeout must be a number or None, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"rotation_timeout must be a finite number >= 0, not {value!r}")
    return float(value)


async def diagnose(
    client: WachatClient,
    instance_name: str,
    *,
    rotation_timeout: float | None = DEFAULT_ROTATION_TIMEOUT,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_step: Callable[[Step], object] | None = None,
) -> Diagnosis:
    """Find out why *instance_name* shows a QR or not, with *client*'s key, base URL and retries.

    The steps, in order (:class:`Check`), each one line: the base URL answers and its TLS
    verifies; the key is accepted (401); the instance exists (404); it can have a QR (409);
    the subscription allows it (403); its state (``open``: linked, no QR needed); a QR PNG
    comes back (502/504 that persist, a 200 that is not a PNG); it decodes as a QR code (with
    the ``doctor`` extra, else skipped; off the event loop, and not over
    :data:`MAX_DECODE_PIXELS`); a new QR comes within *rotation_timeout* seconds (``0`` or
    ``None`` skips it), polled every :data:`ROTATION_POLL` s with *sleep* (or after the 429's
    ``Retry-After``), timed on *clock*, each poll bounded by the time left. A step is ``ok``
    only when an answer showed it, else ``unknown``; the first step that fails names the
    :class:`Cause`, and the later ones are not run. *on_step* is called with each step as
    it is known (to print it at once).

    Failures of the requests are the diagnosis, not exceptions; a bad instance name
    (:class:`InvalidInstanceNameError`), a closed client or a configuration error is raised.
    """
    timeout = _check_timeout(rotation_timeout)
    base = URL(client.base_url)
    walk = _Walk(client, instance_name, base, timeout, sleep, clock)
    return await walk.run(on_step or (lambda _step: None))


class _Walk:
    """One diagnosis: the facts gathered, then the steps walked in order."""

    def __init__(
        self,
        client: WachatClient,
        name: str,
        base: URL,
        rotation_timeout: float,
        sleep: Callable[[float], Awaitable[object]],
        clock: Callable[[], float],
    ) -> None:
        self.client, self.name, self.base = client, name, base
        self.rotation_timeout, self.sleep, self.clock = rotation_timeout, sleep, clock
        self.qr: QRImage | None = None
        self.stops: dict[Check, _Stop] = {}
        #: What an answer showed, for each check it showed.
        self.shown: dict[Check, str] = {}

    def _answered(self) -> None:
        how = "TLS verified" if self.base.scheme == "https" else "plain http"
        self.shown.setdefault(Check.CONNECTION, f"{self.base} answers ({how})")

    def _met(self, error: WachatError, step: Check, homes: tuple[Check, ...]) -> None:
        """Note *error*, met at *step*: a failure of one of *homes* is reported there."""
        stop = _stop(error, self.name, self.base)
        home = _HOME.get(stop.cause)
        self.stops.setdefault(home if home in homes else step, stop)
        answer = isinstance(error, (APIStatusError, InvalidResponseError))
        if answer and stop.cause not in (Cause.WRONG_BASE_URL, Cause.UNREACHABLE):
            self._answered()
        for check in _SHOWS.get(stop.cause, ()):
            self.shown.setdefault(check, _SHOWN[check].format(name=self.name))

    def _state(self, state: InstanceState) -> None:
        self._answered()
        for check in (Check.KEY, Check.INSTANCE):
            self.shown.setdefault(check, _SHOWN[check].format(name=self.name))
        if state.integration not in (None, BAILEYS):
            self.stops[Check.INTEGRATION] = _Stop(
                Cause.NOT_BAILEYS,
                f"{self.name!r} is a {state.integration} instance: only WhatsApp Baileys ones "
                "have a QR",
                "link it the way its integration says, or create a WHATSAPP-BAILEYS instance",
            )
        elif state.integration:
            self.shown[Check.INTEGRATION] = f"{state.integration}: it can have a QR"
        if state.is_connected:
            self.stops[Check.STATE] = _LINKED
        else:
            self.shown[Check.STATE] = f"{state.state!r}: not linked yet, so a QR is needed"

    async def run(self, on_step: Callable[[Step], object]) -> Diagnosis:
        client, name = self.client, self.name
        early = (Check.CONNECTION, Check.KEY, Check.INSTANCE, Check.INTEGRATION, Check.SUBSCRIPTION)
        try:
            self._state(await client.get_instance_state(name))
        except _RAISED:
            raise
        except WachatError as error:
            self._met(error, Check.STATE, early)
        linked = self.stops.get(Check.STATE) is _LINKED
        if linked:
            self.shown[Check.SUBSCRIPTION] = ""  # no QR is asked for: skipped
        elif self.stops.keys().isdisjoint(early):
            try:
                self.qr = qr = await client.get_qr_image(name)
            except _RAISED:
                raise
            except WachatError as error:
                self._met(error, Check.QR, early[1:])
            else:
                self._answered()
                for check in (Check.KEY, Check.INSTANCE):
                    self.shown.setdefault(check, _SHOWN[check].format(name=name))
                self.shown.setdefault(Check.INTEGRATION, "no 409: it can have a QR")
                self.shown[Check.SUBSCRIPTION] = "no 403: the subscription allows QR codes"
                self.shown[Check.QR] = f"a {qr.width}x{qr.height} PNG, {len(qr.data)} bytes"
        steps: list[Step] = []
        cause = Cause.HEALTHY
        after = ""
        for check in Check:
            if after:
                step = Step(check=check, outcome=Outcome.NOT_RUN, found=after)
            else:
                found = self.stops.get(check) or await self._step(check)
                if isinstance(found, _Stop):
                    step = Step(
                        check=check, outcome=found.outcome, found=found.found, advice=found.advice
                    )
                    cause = found.cause
                    linked = cause is Cause.LINKED
                    after = (
                        "no QR needed: the phone is linked"
                        if linked
                        else f"the {check} step failed"
                    )
                else:
                    step = found
            steps.append(step)
            on_step(step)
        return Diagnosis(
            instance_name=name, base_url=str(self.base), cause=cause, steps=tuple(steps)
        )

    async def _step(self, check: Check) -> Step | _Stop:
        """The step *check* when no failure is known for it yet (it may find one)."""
        if check in self.shown:
            if not self.shown[check]:  # the subscription of a linked phone
                return Step(
                    check=check, outcome=Outcome.SKIPPED, found="not asked: the phone is linked"
                )
            return Step(check=check, outcome=Outcome.OK, found=self.shown[check])
        if check not in (Check.DECODE, Check.ROTATION):
            return Step(check=check, outcome=Outcome.UNKNOWN, found="no answer showed it")
        qr = self.qr
        assert qr is not None  # the QR step passed
        if check is Check.ROTATION:
            return await self._rotation(qr)
        if qr.width * qr.height > MAX_DECODE_PIXELS:
            return _Stop(
                Cause.NOT_QR,
                f"the {qr.width}x{qr.height} PNG was not decoded: over {MAX_DECODE_PIXELS:,} "
                "pixels, far larger than a QR image",
                "upstream sent another picture: restart the instance, or report it to Wachat",
            )
        try:
            size = await asyncio.to_thread(_decode, qr.data)
        except ImportError:
            return Step(
                check=check,
                outcome=Outcome.SKIPPED,
                found="not checked: no QR decoder installed",
                advice=INSTALL_HINT,
            )
        except Exception as exc:  # Pillow's failures have no common type
            return _Stop(
                Cause.NOT_PNG,
                f"the {qr.width}x{qr.height} PNG's image data does not decode: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                "upstream sent a broken image: run doctor again; if it stays, report it to Wachat",
            )
        if size is None:
            return _Stop(
                Cause.NOT_QR,
                f"the {qr.width}x{qr.height} PNG holds no QR code a phone could scan",
                "upstream sent another picture: restart the instance, or report it to Wachat",
            )
        return Step(
            check=check,
            outcome=Outcome.OK,
            found=f"a QR code of {size} characters, as a phone scans it",
        )

    async def _rotation(self, first: QRImage) -> Step | _Stop:
        timeout, clock = self.rotation_timeout, self.clock
        if not timeout:
            return Step(
                check=Check.ROTATION,
                outcome=Outcome.SKIPPED,
                found="not checked (rotation timeout 0)",
            )
        started = clock()
        answered, cut, failure = False, False, None
        wait = ROTATION_POLL
        while (left := timeout - (clock() - started)) > 0:
            await self.sleep(min(wait, left))
            if (left := timeout - (clock() - started)) <= 0:
                break
            wait = ROTATION_POLL
            try:
                async with asyncio.timeout(left):  # no poll outlasts the rotation timeout
                    qr = await self.client.get_qr_image(self.name)
            except _RAISED:
                raise
            except WachatError as error:
                if cause_of(error) not in _PASSING:
                    return _stop(error, self.name, self.base)
                failure = error  # polled through, within the timeout
                wait = max(wait, getattr(error, "retry_after", None) or 0)  # a 429's Retry-After
                continue
            except TimeoutError:  # the rotation timeout struck mid-poll
                cut = True
                break
            answered = True
            if qr.sha256 != first.sha256:
                return Step(
                    check=Check.ROTATION,
                    outcome=Outcome.OK,
                    found=f"a new QR after {clock() - started:.0f} s",
                )
        if failure is not None and not answered:
            stop = _stop(failure, self.name, self.base)
            if stop.cause is Cause.RATE_LIMITED:  # the QR is fine; its rotation not known
                return Step(
                    check=Check.ROTATION,
                    outcome=Outcome.UNKNOWN,
                    found=f"{stop.found}: no new QR could be asked for within {timeout:g} s",
                    advice=stop.advice,
                )
            return stop
        if cut and not answered:
            return _Stop(
                Cause.UNREACHABLE,
                f"no answer to the QR requests within {timeout:g} s",
                "check the network or a firewall on the way, then run doctor again",
            )
        return await self._no_new_qr()

    async def _no_new_qr(self) -> Step | _Stop:
        """The same QR all along: first, whether the phone was linked meanwhile."""
        timeout = self.rotation_timeout
        try:
            state = await self.client.get_instance_state(self.name)
        except _RAISED:
            raise
        except WachatError:
            state = None
        if state is not None and state.is_connected:
            return _Stop(
                Cause.LINKED,
                "'open': the phone was linked while doctor waited for a new QR",
                "no QR is needed any more",
                Outcome.OK,
            )
        if timeout < MIN_ROTATION_TIMEOUT:
            return Step(
                check=Check.ROTATION,
                outcome=Outcome.UNKNOWN,
                found=f"no new QR within {timeout:g} s (WhatsApp rotates about every 20 s; try "
                "--rotation-timeout 30)",
            )
        return _Stop(
            Cause.NOT_ROTATING,
            f"the same QR for {timeout:g} s (WhatsApp rotates them about every 20 s)",
            "the QR is stuck upstream: restart the instance, or recreate it",
        )
