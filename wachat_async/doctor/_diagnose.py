""":func:`diagnose`: why a QR shows or not, step by step, on the client's public calls only.

Two requests give most of the facts: ``GET /instance/state`` (the base URL, the key, the
instance, its integration and state), then, unless the phone is linked, the QR image (409,
403, the PNG). The steps are then walked in order; the first that fails names the cause and
the rest are not run. Decoding the PNG needs the ``doctor`` extra (zxing-cpp, Pillow);
checking that the QR rotates polls it again, within ``rotation_timeout`` on *clock*.
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
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InstanceState,
    InvalidInstanceNameError,
    InvalidResponseError,
    QRFetchFailedError,
    QRImage,
    QRNotSupportedError,
    SubscriptionRestrictedError,
    TLSVerificationError,
    WachatClient,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)

from ._report import Cause, Check, Diagnosis, Outcome, Step

__all__ = ["DEFAULT_ROTATION_TIMEOUT", "INSTALL_HINT", "ROTATION_POLL", "diagnose"]

#: How long :func:`diagnose` waits for a new QR by default (WhatsApp rotates them about every
#: 20 s).
DEFAULT_ROTATION_TIMEOUT: Final = 45.0
#: Seconds between the QR requests of the rotation step.
ROTATION_POLL: Final = 2.0
#: How to install the QR decoder the ``decode`` step uses.
INSTALL_HINT: Final = "pip install 'wachat-async[doctor]' (zxing-cpp and Pillow) to check it"
BAILEYS: Final = "WHATSAPP-BAILEYS"

#: Errors that are the caller's own (a bad name, a closed client): raised, not diagnosed.
_RAISED = (InvalidInstanceNameError, ClientClosedError, ConfigurationError)
#: The checks a failure belongs to whichever request met it; others fail the request's step.
_HOME: Final = {
    Cause.DNS: Check.CONNECTION,
    Cause.REFUSED: Check.CONNECTION,
    Cause.UNREACHABLE: Check.CONNECTION,
    Cause.TLS: Check.CONNECTION,
    Cause.WRONG_BASE_URL: Check.CONNECTION,
    Cause.KEY_REJECTED: Check.KEY,
    Cause.NOT_FOUND: Check.INSTANCE,
    Cause.NOT_BAILEYS: Check.INTEGRATION,
    Cause.SUBSCRIPTION: Check.SUBSCRIPTION,
}


class _Stop(NamedTuple):
    """A step that ends the walk: a failure, or (``linked``) the phone already linked."""

    cause: Cause
    found: str
    advice: str
    outcome: Outcome = Outcome.FAILED


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
    if any(isinstance(exc, TLSVerificationError) for exc in chain):
        return Cause.TLS
    names = {type(exc).__name__ for exc in chain} | {str(exc).split(":")[0] for exc in chain}
    if "ClientConnectorDNSError" in names or any(
        isinstance(exc, OSError) and exc.errno is not None and exc.errno < 0 for exc in chain
    ):  # aiohttp's DNS error, or socket.gaierror (negative EAI_* codes)
        return Cause.DNS
    if any(_refused(exc) for exc in chain):
        return Cause.REFUSED
    return Cause.UNREACHABLE


def cause_of(error: WachatError) -> Cause:
    """The :class:`Cause` an error of a client call points to."""
    if isinstance(error, (WachatConnectionError, WachatTimeoutError)):
        return _connection_cause(error)
    if isinstance(error, AuthenticationError):
        return Cause.KEY_REJECTED
    if isinstance(error, InstanceNotFoundError):
        notes = " ".join(getattr(error, "__notes__", ()))
        route = "is the base URL right?" in notes or "no such route" in error.body.lower()
        return Cause.WRONG_BASE_URL if route else Cause.NOT_FOUND
    if isinstance(error, QRNotSupportedError):
        return Cause.NOT_BAILEYS
    if isinstance(error, SubscriptionRestrictedError):
        return Cause.SUBSCRIPTION
    if isinstance(error, (QRFetchFailedError, GatewayTimeoutError)):
        return Cause.UPSTREAM
    if isinstance(error, InvalidResponseError):
        return Cause.NOT_PNG
    return Cause.UNEXPECTED


def _stop(error: WachatError, name: str, base: URL) -> _Stop:
    """What to say of *error* (met asking about instance *name* at *base*)."""
    cause = cause_of(error)
    where = f"{base.host}:{base.port}"
    attempts = f" after {error.attempts} attempts" if error.attempts > 1 else ""
    status = getattr(error, "status", None)
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
            "check the network, a firewall or proxy on the way, then run doctor again",
        ),
        Cause.TLS: (
            f"the certificate of {where} does not verify: {getattr(error, 'reason', '') or error}",
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
    }
    found, advice = said.get(
        cause, (f"{type(error).__name__}: {error}", "run doctor again; if it stays, report it")
    )
    return _Stop(cause, found, advice)


def _decode(png: bytes) -> int | None:
    """How many characters the QR code in *png* holds (``None``: no QR code in it); raises
    ImportError without the ``doctor`` extra."""
    import zxingcpp
    from PIL import Image

    with Image.open(io.BytesIO(png)) as picture:
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
) -> Diagnosis:
    """Find out why *instance_name* shows a QR or not, with *client*'s key, base URL and retries.

    The steps, in order (:class:`Check`), each one line: the base URL answers and its TLS
    verifies; the key is accepted (401); the instance exists (404); it can have a QR (409);
    the subscription allows it (403); its state (``open``: linked, no QR needed); a QR PNG
    comes back (502/504 that persist, a 200 that is not a PNG); it decodes as a QR code (with
    the ``doctor`` extra, else skipped); a new QR comes within *rotation_timeout* seconds
    (``0`` or ``None`` skips it), polled every :data:`ROTATION_POLL` s with *sleep*, timed on
    *clock*. The first step that fails names the :class:`Cause`; the later ones are not run.

    Failures of the requests are the diagnosis, not exceptions; a bad instance name
    (:class:`InvalidInstanceNameError`), a closed client or a configuration error is raised.
    """
    timeout = _check_timeout(rotation_timeout)
    base = URL(client.base_url)
    return await _Walk(client, instance_name, base, timeout, sleep, clock).run()


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
        self.state: InstanceState | None = None
        self.qr: QRImage | None = None
        self.stops: dict[Check, _Stop] = {}
        self.linked = False

    def _met(self, error: WachatError, step: Check, homes: tuple[Check, ...]) -> None:
        """Note *error*, met at *step*: a failure of one of *homes* is reported there."""
        stop = _stop(error, self.name, self.base)
        home = _HOME.get(stop.cause)
        self.stops.setdefault(home if home in homes else step, stop)

    async def run(self) -> Diagnosis:
        client, name = self.client, self.name
        early = (Check.CONNECTION, Check.KEY, Check.INSTANCE, Check.INTEGRATION, Check.SUBSCRIPTION)
        try:
            self.state = await client.get_instance_state(name)
        except _RAISED:
            raise
        except WachatError as error:
            self._met(error, Check.STATE, early)
        state = self.state
        self.linked = state is not None and state.is_connected
        if state is not None and state.integration not in (None, BAILEYS):
            self.stops[Check.INTEGRATION] = _Stop(
                Cause.NOT_BAILEYS,
                f"{name!r} is a {state.integration} instance: only WhatsApp Baileys ones have a QR",
                "link it the way its integration says, or create a WHATSAPP-BAILEYS instance",
            )
        elif self.linked:
            self.stops[Check.STATE] = _Stop(
                Cause.LINKED,
                "'open': the phone is already linked",
                "no QR is needed (to link another phone, log this one out first)",
                Outcome.OK,
            )
        if not self.linked and self.stops.keys().isdisjoint(early):
            try:
                self.qr = await client.get_qr_image(name)
            except _RAISED:
                raise
            except WachatError as error:
                self._met(error, Check.QR, early[1:])
        steps: list[Step] = []
        cause = Cause.HEALTHY
        after = ""
        for check in Check:
            if after:
                steps.append(Step(check=check, outcome=Outcome.NOT_RUN, found=after))
                continue
            stop = self.stops.get(check)
            if stop is None:
                result = await self._step(check)
                if isinstance(result, Step):
                    steps.append(result)
                    continue
                stop = result
            steps.append(
                Step(check=check, outcome=stop.outcome, found=stop.found, advice=stop.advice)
            )
            cause = stop.cause
            linked = cause is Cause.LINKED
            after = "no QR needed: the phone is linked" if linked else f"the {check} step failed"
        return Diagnosis(
            instance_name=name, base_url=str(self.base), cause=cause, steps=tuple(steps)
        )

    async def _step(self, check: Check) -> Step | _Stop:
        """The step *check* when no failure is known for it yet (it may find one)."""

        def ok(found: str) -> Step:
            return Step(check=check, outcome=Outcome.OK, found=found)

        state, qr = self.state, self.qr
        if check is Check.CONNECTION:
            how = "TLS verified" if self.base.scheme == "https" else "plain http"
            return ok(f"{self.base} answers ({how})")
        if check is Check.KEY:
            return ok("the API key is accepted")
        if check is Check.INSTANCE:
            return ok(f"{self.name!r} exists for this key")
        if check is Check.INTEGRATION:
            kind = "no 409" if state is None else state.integration or "no 409"
            return ok(f"{kind}: it can have a QR")
        if check is Check.SUBSCRIPTION:
            if self.linked:  # no QR was asked for
                return Step(
                    check=check, outcome=Outcome.SKIPPED, found="not asked: the phone is linked"
                )
            return ok("no 403: the subscription allows QR codes")
        if check is Check.STATE:
            assert state is not None
            return ok(f"{state.state!r}: not linked yet, so a QR is needed")
        assert qr is not None
        if check is Check.QR:
            return ok(f"a {qr.width}x{qr.height} PNG, {len(qr.data)} bytes")
        if check is Check.DECODE:
            try:
                size = _decode(qr.data)
            except ImportError:
                return Step(
                    check=check,
                    outcome=Outcome.SKIPPED,
                    found="not checked: no QR decoder installed",
                    advice=INSTALL_HINT,
                )
            if size is None:
                return _Stop(
                    Cause.NOT_QR,
                    f"the {qr.width}x{qr.height} PNG holds no QR code a phone could scan",
                    "upstream sent another picture: restart the instance, or report it to Wachat",
                )
            return ok(f"a QR code of {size} characters, as a phone scans it")
        return await self._rotation(qr)

    async def _rotation(self, first: QRImage) -> Step | _Stop:
        timeout, clock = self.rotation_timeout, self.clock
        if not timeout:
            return Step(
                check=Check.ROTATION,
                outcome=Outcome.SKIPPED,
                found="not checked (rotation timeout 0)",
            )
        started = clock()
        while (left := timeout - (clock() - started)) > 0:
            await self.sleep(min(ROTATION_POLL, left))
            try:
                qr = await self.client.get_qr_image(self.name)
            except _RAISED:
                raise
            except WachatError as error:
                return _stop(error, self.name, self.base)
            if qr.sha256 != first.sha256:
                return Step(
                    check=Check.ROTATION,
                    outcome=Outcome.OK,
                    found=f"a new QR after {clock() - started:.0f} s",
                )
        return _Stop(
            Cause.NOT_ROTATING,
            f"the same QR for {timeout:g} s (WhatsApp rotates them about every 20 s)",
            "the QR is stuck upstream: restart the instance, or recreate it",
        )
