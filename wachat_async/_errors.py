"""The exceptions wachat-async raises, all :class:`WachatError` (docs/reference/errors.md).
Messages never carry the API key. Imports only ``_redact``."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import NoReturn

from ._redact import redact_message


class WachatError(Exception):
    """Base class of every error wachat-async raises: ``instance_name`` is the instance the
    call was about (or ``None``), ``attempts`` how many HTTP attempts the call made."""

    def __init__(
        self, message: str, *, instance_name: str | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.message = message
        self.instance_name = instance_name
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(WachatError, ValueError):
    """The client was configured in a way that cannot work (no API key, bad base URL, ...);
    the message is redacted: *secrets* in any encoding, and URLs' user info, query, fragment."""

    def __init__(self, message: str, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(redact_message(message, secrets))


class InvalidInstanceNameError(WachatError, ValueError):
    """An instance name that can never be sent (empty, whitespace-only, control characters,
    lone surrogates), raised before any request; also a ``ValueError``. A name that is not a
    ``str`` raises a subclass that is also a ``TypeError`` (``instance_name``: its ``repr``)."""


class _InstanceNameTypeError(InvalidInstanceNameError, TypeError):
    """An instance name that is not a ``str``."""


class ClientClosedError(WachatError, RuntimeError):
    """The client was closed: raised by later calls, by calls waiting for a slot or paced
    (``attempts`` 0) and by requests in flight on its own session. Also a ``RuntimeError``."""


class APIStatusError(WachatError):
    """The API answered with a status other than 200: ``status``, ``body`` (a short redacted
    excerpt) and ``retry_after`` (the ``Retry-After`` in seconds, if usable)."""

    status: int = 0
    default_message: str = "Unexpected response status"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        instance_name: str | None = None,
        body: str = "",
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        self.status = type(self).status if status is None else status
        self.body = body
        self.retry_after = retry_after
        if message is None:
            message = self._format(instance_name, body)
        super().__init__(message, instance_name=instance_name, attempts=attempts)

    def _format(self, instance_name: str | None, body: str) -> str:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown Status"
        text = f"{self.status} {phrase}: {self.default_message}"
        if instance_name is not None:
            text += f" (instance {instance_name!r})"
        if body:
            text += f"; server said: {body}"
        return text


class BadRequestError(APIStatusError):
    """400: the ``instanceName`` query parameter was missing or invalid."""

    status = 400
    default_message = "missing or invalid instanceName"


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""

    status = 401
    default_message = "missing or invalid API key"


class SubscriptionRestrictedError(APIStatusError):
    """403: the account's subscription does not allow QR generation."""

    status = 403
    default_message = "subscription restriction prevented QR generation"


class InstanceNotFoundError(APIStatusError):
    """404: no instance of that name belongs to this API key."""

    status = 404
    default_message = "instance not found for this API key"


class QRNotSupportedError(APIStatusError):
    """409: QR codes exist only for WhatsApp Baileys instances."""

    status = 409
    default_message = "QR code is only available for WhatsApp Baileys instances"


class QRFetchFailedError(APIStatusError):
    """502: Wachat failed to fetch or decode the QR image upstream. Transient: retried."""

    status = 502
    default_message = "Wachat failed to fetch or decode the QR code image"


class GatewayTimeoutError(APIStatusError):
    """504: the request timed out inside Wachat. Transient: retried."""

    status = 504
    default_message = "Wachat API request timed out"


class UnexpectedStatusError(APIStatusError):
    """Any status the endpoint does not document (redirects included: they are not followed)."""

    default_message = "status not documented for this endpoint"


class RateLimitError(UnexpectedStatusError):
    """429: too many requests; ``retry_after`` is the server's ``Retry-After`` in seconds (or
    None). Not retried within a call, but it pauses the client's new requests (docs/fleets.md,
    "Rate limits and outages"); ``fetch_many`` and ``watch_qr`` retry the name once paced.
    An :class:`UnexpectedStatusError`, as a 429 was before this class existed."""

    status = 429
    default_message = "the API's rate limit was reached"


class WachatConnectionError(WachatError):
    """The connection failed: refused, reset, DNS, TLS, or a response that is not valid HTTP."""


class TLSVerificationError(WachatConnectionError):
    """The server's TLS certificate did not verify (an unknown CA, another host name, expired,
    or a wrong ``ssl=aiohttp.Fingerprint`` pin): ``reason`` is OpenSSL's explanation,
    ``host``/``port`` the server dialled; the message gives the advice that fits the cause.
    Never retried, even with ``retry_transport_errors=True``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        host: str | None = None,
        port: int | None = None,
        instance_name: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, instance_name=instance_name, attempts=attempts)
        self.reason = reason
        self.host = host
        self.port = port


class ProxyError(WachatConnectionError):
    """The HTTP proxy refused or failed the request: ``proxy_status`` is its answer (``None``
    if none). A transport fault: retried with ``retry_transport_errors=True``."""

    def __init__(
        self,
        message: str,
        *,
        proxy_status: int | None = None,
        instance_name: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, instance_name=instance_name, attempts=attempts)
        self.proxy_status = proxy_status


class ProxyAuthenticationError(ProxyError):
    """407 Proxy Authentication Required: the proxy wants credentials, or others than those
    given (``proxy="http://user:password@host:port"``). Never retried."""


class WachatTimeoutError(WachatError, TimeoutError):
    """A client-side timeout expired: one attempt's ``timeout`` (a transport fault), or the
    policy's ``deadline`` (:class:`DeadlineExceededError`). Also a :class:`TimeoutError`."""


class DeadlineExceededError(WachatTimeoutError):
    """The retry policy's ``deadline`` (seconds) expired for the whole call; never retried.
    ``__cause__`` is the last attempt's error, if one had failed."""

    def __init__(
        self,
        message: str,
        *,
        deadline: float,
        instance_name: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, instance_name=instance_name, attempts=attempts)
        self.deadline = deadline


class QRExpiredError(WachatError):
    """A ``watch_qr`` limit (``max_qrs``, ``linking_timeout``) was reached before the phone was
    linked: ``qrs_shown`` QR codes in ``elapsed`` seconds. Start a new watch."""

    def __init__(self, *, instance_name: str, qrs_shown: int, elapsed: float) -> None:
        super().__init__(
            f"instance {instance_name!r}: the phone was not linked after {qrs_shown} QR "
            f"code(s) / {elapsed:.0f} s; start a new watch for a new QR",
            instance_name=instance_name,
            attempts=0,
        )
        self.qrs_shown: int = qrs_shown
        self.elapsed: float = elapsed


class InvalidResponseError(WachatError):
    """A successful status whose body is not what the endpoint promises."""


class InvalidImageError(InvalidResponseError):
    """A 200 that is not a complete PNG: wrong content type, bad signature, or ``truncated``
    (the body ended early: a transport fault, retried with ``retry_transport_errors``)."""

    def __init__(
        self,
        message: str,
        *,
        instance_name: str | None = None,
        attempts: int = 1,
        content_type: str | None = None,
        truncated: bool = False,
    ) -> None:
        super().__init__(message, instance_name=instance_name, attempts=attempts)
        self.content_type = content_type
        self.truncated = truncated


class ResponseTooLargeError(InvalidResponseError):
    """The body is larger than ``max_image_bytes``; reading stopped as soon as that was known."""

    def __init__(
        self,
        message: str,
        *,
        instance_name: str | None = None,
        attempts: int = 1,
        limit: int,
        content_length: int | None = None,
    ) -> None:
        super().__init__(message, instance_name=instance_name, attempts=attempts)
        self.limit = limit
        self.content_length = content_length


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        SubscriptionRestrictedError,
        InstanceNotFoundError,
        QRNotSupportedError,
        QRFetchFailedError,
        GatewayTimeoutError,
        RateLimitError,
    )
}


def status_error(
    status: int,
    *,
    instance_name: str | None = None,
    body: str = "",
    retry_after: float | None = None,
) -> APIStatusError:
    """The typed exception for an HTTP *status* (``UnexpectedStatusError`` if undocumented)."""
    cls = _BY_STATUS.get(status, UnexpectedStatusError)
    return cls(status=status, instance_name=instance_name, body=body, retry_after=retry_after)


def raise_clean(error: BaseException) -> NoReturn:
    """Raise *error* with no ``__context__`` (``from None`` only hides it; it may quote the key)."""
    try:
        raise error
    except BaseException as exc:
        exc.__context__ = None
        raise
