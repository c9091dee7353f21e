"""Value objects (frozen attrs): the QR image, a per-instance result, an instance's state;
the PNG rules, once (:func:`check_png`; the image data's CRC unchecked for speed)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

from ._errors import InvalidImageError, InvalidResponseError, WachatError
from ._files import PathArg, write_bytes
from ._redact import excerpt

__all__ = [
    "PNG_SIGNATURE",
    "PNG_HEADER_SIZE",
    "InstanceState",
    "QRFailure",
    "QRImage",
    "QRResult",
    "QRSuccess",
    "check_chunk_walk",
    "check_png",
    "check_png_end",
    "png_dimensions",
    "walk_chunks",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The signature and the whole IHDR chunk: length and type (8), data (13), CRC (4).
PNG_HEADER_SIZE = 33
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_START = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR"  # signature, then a 13-byte IHDR
_IHDR_FIELDS = struct.Struct(">II5sI")  # width, height, the five one-byte fields, CRC
_MAX_DIMENSION = 2**31 - 1  # the PNG spec's limit
#: Bit depths allowed for each colour type (PNG spec, 11.2.2 IHDR).
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
#: Every valid run of IHDR's five one-byte fields: a depth allowed for the colour type,
#: compression 0, filter 0, interlace 0 or 1 (one set lookup checks all five).
_IHDR_CODES = frozenset(
    bytes((depth, colour, 0, 0, interlace))
    for colour, depths in _DEPTHS.items()
    for depth in depths
    for interlace in (0, 1)
)
_CHUNK = struct.Struct(">I4s")  # a chunk's length and type
# Bound once: these run on every fetched image.
_unpack_ihdr = _IHDR_FIELDS.unpack_from
_unpack_chunk = _CHUNK.unpack_from
_crc32 = zlib.crc32


def png_dimensions(head: bytes, instance_name: str | None = None) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk at the start of *head* (its first
    33 bytes), else :class:`InvalidImageError`."""
    if len(head) >= PNG_HEADER_SIZE and head.startswith(_PNG_START):
        width, height, codes, crc = _unpack_ihdr(head, 16)
        if (
            _crc32(head[12:29]) == crc
            and 0 < width <= _MAX_DIMENSION
            and 0 < height <= _MAX_DIMENSION
            and codes in _IHDR_CODES
        ):
            return width, height
    raise _png_error(head, instance_name)


def _png_error(head: bytes, instance_name: str | None) -> InvalidImageError:
    """Why *head* is not the start of a valid PNG."""
    if not head:
        return InvalidImageError("not a PNG: empty body", instance_name=instance_name)
    if len(head) < PNG_HEADER_SIZE and PNG_SIGNATURE.startswith(head[:8]):
        return InvalidImageError(
            f"PNG truncated: {len(head)} bytes, too short for its header",
            instance_name=instance_name,
            truncated=True,
        )
    if head[:8] != PNG_SIGNATURE:
        return InvalidImageError("not a PNG: bad signature", instance_name=instance_name)
    if not head.startswith(_PNG_START):
        return InvalidImageError("not a PNG: first chunk is not IHDR", instance_name=instance_name)
    width, height, codes, crc = _IHDR_FIELDS.unpack_from(head, 16)
    if zlib.crc32(head[12:29]) != crc:
        return InvalidImageError("not a PNG: IHDR checksum mismatch", instance_name=instance_name)
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        return InvalidImageError(
            f"not a PNG: invalid dimensions {width}x{height}", instance_name=instance_name
        )
    depth, colour, compression, filtering, interlace = codes
    return InvalidImageError(
        f"not a PNG: invalid IHDR (bit depth {depth}, colour type {colour}, compression "
        f"{compression}, filter {filtering}, interlace {interlace})",
        instance_name=instance_name,
    )


def check_png_end(data: bytes, instance_name: str | None = None) -> None:
    """Raise :class:`InvalidImageError` (``truncated``) unless *data* ends with the IEND chunk."""
    if not data.endswith(_IEND):
        raise InvalidImageError(
            "PNG truncated: it does not end with an IEND chunk",
            instance_name=instance_name,
            truncated=True,
        )


def walk_chunks(data: bytes, pos: int, idat: bool) -> tuple[int, bool, int]:
    """Follow the chunk lengths in *data* from *pos* up to the first ``IEND``: where the walk
    stopped, whether an ``IDAT`` came (or *idat*), where that ``IEND`` starts (-1: none yet).
    Resumable: a body read in pieces is walked piece by piece."""
    last = len(data) - 8  # the last place a chunk's length and type fit
    while pos <= last:
        length, kind = _unpack_chunk(data, pos)
        if kind == b"IEND":
            return pos, idat, pos
        idat = idat or kind == b"IDAT"
        pos += length + 12
    return pos, idat, -1


def check_chunk_walk(iend_at: int, size: int, idat: bool, instance_name: str | None) -> None:
    """Raise :class:`InvalidImageError` unless the walk of a *size*-byte body met its first
    ``IEND`` as its last chunk (*iend_at*), after an ``IDAT`` (*idat*)."""
    if 0 <= iend_at < size - 12:
        reason = "an IEND chunk before the end"
    elif iend_at != size - 12:
        reason = "chunk lengths do not chain to the IEND trailer"
    elif not idat:
        reason = "no IDAT chunk"
    else:
        return
    raise InvalidImageError(f"not a PNG: {reason}", instance_name=instance_name)


def check_png(data: bytes, instance_name: str | None = None) -> tuple[int, int]:
    """Raise :class:`InvalidImageError` unless *data* is a complete PNG (header, ``IEND``
    trailer, chunks chaining to it with an ``IDAT``); return its size."""
    size = png_dimensions(data, instance_name)
    check_png_end(data, instance_name)
    _, idat, iend_at = walk_chunks(data, PNG_HEADER_SIZE, False)
    check_chunk_walk(iend_at, len(data), idat, instance_name)
    return size


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _to_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)  # an immutable, hashable copy
    raise TypeError(f"QRImage data must be bytes, not {type(data).__name__}")


def _check_image(
    instance_name: object, data: bytes, content_type: object, fetched_at: object
) -> tuple[int, int]:
    """Every check of a :class:`QRImage`'s fields; returns the PNG's size."""
    if not isinstance(instance_name, str):
        raise TypeError(
            f"QRImage instance_name must be a str, got a {type(instance_name).__name__}"
        )
    if not isinstance(content_type, str) or content_type.lower() != "image/png":
        raise InvalidImageError(
            "QRImage content_type must be 'image/png'", instance_name=instance_name
        )
    if not isinstance(fetched_at, datetime) or fetched_at.utcoffset() is None:
        kind = "naive datetime" if isinstance(fetched_at, datetime) else type(fetched_at).__name__
        raise TypeError(f"QRImage fetched_at must be a timezone-aware datetime, got a {kind}")
    return check_png(data, instance_name)


# Dict-backed: attrs fills a frozen dict class's fields without an object.__setattr__ each.
@attrs.frozen(kw_only=True, repr=False, slots=False)
class QRImage:
    """A validated QR code PNG, as returned by ``GET /instance/qr/image``: every way of
    building one checks *data* (:class:`InvalidImageError` if it is not a complete PNG).
    ``width`` and ``height`` come from the PNG header (0: take them from it). ``repr()`` never
    dumps the bytes; in Jupyter the image is shown inline."""

    instance_name: str
    data: bytes = attrs.field(repr=False, converter=_to_bytes)
    content_type: str = "image/png"
    width: int = 0
    height: int = 0
    fetched_at: datetime = attrs.field(factory=_utcnow)

    def __attrs_post_init__(self) -> None:
        width, height = _check_image(
            self.instance_name, self.data, self.content_type, self.fetched_at
        )
        given = (self.width or width, self.height or height)
        if given != (width, height):
            raise InvalidImageError(
                f"QRImage width/height {given[0]}x{given[1]} disagree with the PNG header "
                f"({width}x{height})",
                instance_name=self.instance_name,
            )
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    @classmethod
    def from_png(
        cls,
        data: bytes,
        *,
        instance_name: str,
        content_type: str = "image/png",
        fetched_at: datetime | None = None,
    ) -> QRImage:
        """Validate *data* as a complete PNG and wrap it, stamped *fetched_at* (default: now).
        Raises :class:`InvalidImageError`."""
        if type(data) is not bytes:
            data = _to_bytes(data)
        if fetched_at is None:
            fetched_at = datetime.now(UTC)
        width, height = _check_image(instance_name, data, content_type, fetched_at)
        # The constructor's checks without the constructor (12,000 instructions more per
        # fetched image): the fields go into the instance dict as attrs' __init__ puts them.
        self = object.__new__(cls)
        self.__dict__.update(
            instance_name=instance_name,
            data=data,
            content_type=content_type,
            width=width,
            height=height,
            fetched_at=fetched_at,
        )
        return self

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the PNG bytes: equal digests mean the same QR image."""
        return hashlib.sha256(self.data).hexdigest()

    def to_data_uri(self) -> str:
        """A ``data:image/png;base64,...`` URI for ``<img src>``: the safe way to show a QR in a
        page, the API key never reaches the browser."""
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")

    def save(self, path: PathArg) -> Path:
        """Write the PNG to *path* as ``WachatClient.save_qr_image`` does (docs/fetching.md,
        "Saving"), but blocking; return ``Path(path)``."""
        return write_bytes(path, self.data)

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return (
            f"QRImage(instance_name={self.instance_name!r}, {self.width}x{self.height} PNG, "
            f"{len(self.data)} bytes, sha256={self.sha256[:12]}…, "
            f"fetched_at={self.fetched_at.isoformat()})"
        )


def _instance_of(cls: type) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """``attrs.validators.instance_of`` naming types only (attrs' quotes the value's repr)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, cls):
            raise TypeError(
                f"{type(instance).__name__} {attribute.name} must be a {cls.__name__}, "
                f"not {type(value).__name__}"
            )

    return check


def _exactly_one(instance: QRResult, attribute: attrs.Attribute[Any], value: object) -> None:
    if (instance.image is None) == (instance.error is None):
        raise ValueError(f"{type(instance).__name__} needs exactly one of image and error")


@attrs.frozen(kw_only=True)
class QRResult:
    """The outcome of fetching one instance's QR in a batch: a :class:`QRSuccess` (``ok``,
    ``image`` set) or a :class:`QRFailure` (``error`` set); ``QRResult(...)`` builds the right
    one. How type checkers narrow them: docs/fleets.md, "Typed results"."""

    instance_name: str
    image: QRImage | None = None
    error: WachatError | None = attrs.field(default=None, validator=_exactly_one)

    def __new__(cls, *args: Any, **kwargs: Any) -> QRResult:
        if cls is QRResult:
            # Pick the subclass; its attrs __init__ then runs with the same arguments.
            image, error = kwargs.get("image"), kwargs.get("error")
            if (image is None) == (error is None) or args:
                raise ValueError("QRResult needs exactly one of image and error")
            cls = QRSuccess if error is None else QRFailure
        return object.__new__(cls)

    @property
    def ok(self) -> bool:
        """True when the fetch succeeded (``image`` is set)."""
        return self.image is not None


@attrs.frozen(kw_only=True)
class QRSuccess(QRResult):
    """A :class:`QRResult` whose fetch succeeded: ``image`` is set, ``error`` is ``None``."""

    image: QRImage = attrs.field(validator=_instance_of(QRImage))
    error: None = attrs.field(default=None, validator=_exactly_one)

    @property
    def ok(self) -> Literal[True]:
        """Always ``True``."""
        return True


@attrs.frozen(kw_only=True)
class QRFailure(QRResult):
    """A :class:`QRResult` whose fetch failed: ``error`` is set, ``image`` is ``None``."""

    image: None = None
    error: WachatError = attrs.field(validator=[_exactly_one, _instance_of(WachatError)])

    @property
    def ok(self) -> Literal[False]:
        """Always ``False``."""
        return False


@attrs.frozen(kw_only=True)
class InstanceState:
    """An instance's connection state from ``GET /instance/state``: ``state`` as the API sent
    it (``"open"``, ``"connecting"``, ``"close"``...); only ``"open"`` counts as connected."""

    instance_name: str
    state: str
    integration: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_payload(
        cls, payload: object, *, instance_name: str, secrets: Iterable[str] = ()
    ) -> InstanceState:
        """The state in a ``GET /instance/state`` body (as sent, or decoded JSON):
        ``instance.state``, or ``data.instance.state`` as some gateways wrap it. Anything else
        raises :class:`InvalidResponseError` with a redacted excerpt, never another error."""
        body = payload
        if isinstance(body, memoryview):
            body = bytes(body)
        if isinstance(body, (bytes, bytearray, str)):
            try:
                decoded: object = json.loads(body)
            except (ValueError, RecursionError):  # deeply nested JSON recurses
                decoded = None
        else:
            decoded, body = body, None
        instance = _field(decoded, "instance")
        state = instance.get("state")
        if state is None:
            state = _field(_field(decoded, "data"), "instance").get("state")
        if not isinstance(state, str):
            raise InvalidResponseError(
                "GET /instance/state returned no state string: "
                + (excerpt(_shown_body(body, decoded), secrets, limit=200) or "empty body"),
                instance_name=instance_name,
            )
        integration = instance.get("integration")
        return cls(
            instance_name=instance_name,
            state=state,
            integration=integration if isinstance(integration, str) else None,
            raw=decoded if isinstance(decoded, dict) else {},  # a dict: it held the state
        )

    @property
    def is_connected(self) -> bool:
        """True once the phone is linked (state ``"open"``)."""
        return self.state == "open"


def _shown_body(body: bytes | bytearray | str | None, decoded: object) -> str:
    """The text of a state body for an error message: as sent, or the decoded value as JSON."""
    if isinstance(body, str):
        return body
    if body is not None:
        return bytes(body).decode("utf-8", "replace")
    try:
        return json.dumps(decoded, default=repr)
    except (ValueError, RecursionError):  # a circular or too deeply nested value
        return f"a {type(decoded).__name__}"


def _field(obj: object, key: str) -> dict[str, Any]:
    """``obj[key]`` when both are JSON objects, else an empty dict."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}
