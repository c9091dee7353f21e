"""wachat-async: an asyncio client for the Wachat API's QR-code endpoint.

Streams ``GET /instance/qr/image`` PNGs with a size cap, PNG validation and atomic saves;
retries only 502/504, with jittered backoff, a deadline, ``Retry-After`` and a retry budget;
keeps the API key out of every repr, exception and log line::

    async with WachatClient() as client:  # key from WACHAT_API_KEY
        qr = await client.get_qr_image("t1_abc_store")
        qr.save("qr.png")

``__all__`` is the whole public surface, re-exported from the private modules.
"""

from ._client import WachatClient
from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    GatewayTimeoutError,
    InstanceNotFoundError,
    InvalidImageError,
    InvalidInstanceNameError,
    InvalidResponseError,
    ProxyAuthenticationError,
    ProxyError,
    QRExpiredError,
    QRFetchFailedError,
    QRNotSupportedError,
    RateLimitError,
    ResponseTooLargeError,
    SubscriptionRestrictedError,
    TLSVerificationError,
    UnexpectedStatusError,
    WachatConnectionError,
    WachatError,
    WachatTimeoutError,
)
from ._models import InstanceState, QRFailure, QRImage, QRResult, QRSuccess
from ._network import InsecureTLSWarning
from ._polling import FetchMany, QRWatch
from ._retry import GiveUpEvent, RetryBudget, RetryEvent, RetryPolicy
from ._stats import ClientStats, PacingStats
from ._stream import QRStream
from ._urls import DEFAULT_BASE_URL, ApiKeyExposureWarning, build_qr_image_url, qr_img_tag
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "APIStatusError",
    "ApiKeyExposureWarning",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ClientStats",
    "ConfigurationError",
    "DeadlineExceededError",
    "FetchMany",
    "GatewayTimeoutError",
    "GiveUpEvent",
    "InstanceNotFoundError",
    "InsecureTLSWarning",
    "InstanceState",
    "InvalidImageError",
    "InvalidInstanceNameError",
    "InvalidResponseError",
    "ProxyAuthenticationError",
    "ProxyError",
    "QRExpiredError",
    "QRFailure",
    "QRFetchFailedError",
    "QRImage",
    "QRNotSupportedError",
    "QRResult",
    "QRStream",
    "QRSuccess",
    "PacingStats",
    "QRWatch",
    "RateLimitError",
    "ResponseTooLargeError",
    "RetryBudget",
    "RetryEvent",
    "RetryPolicy",
    "SubscriptionRestrictedError",
    "TLSVerificationError",
    "UnexpectedStatusError",
    "WachatClient",
    "WachatConnectionError",
    "WachatError",
    "WachatTimeoutError",
    "__version__",
    "build_qr_image_url",
    "qr_img_tag",
]
