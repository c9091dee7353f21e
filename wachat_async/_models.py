"""Value objects: the QR image, a per-instance polling result, an instance's state.

All are frozen attrs classes. ``QRImage`` checks that its bytes are a complete PNG whenever it
is built (``QRImage(...)``, :meth:`QRImage.from_png`, ``attrs.evolve``), so holding one means
holding a well-formed image: signature, IHDR (checksum, sides, fields the spec allows), chunks
chaining by their lengths to the final ``IEND``, at least one ``IDAT``. The pixels are not
decompressed and the other chunks' CRCs are not checked (the image data's CRC alone would cost
about 10k instructions for a 1 KB QR under callgrind, as much as the rest of ``from_png``).
The client, which has already validated the bytes while reading them, uses the private
``QRImage._trusted`` so the success path does not check them twice.

``QRImage`` is built on every successful fetch, so its construction is kept cheap (measured in
instructions under callgrind): it is a dict-backed frozen class whose trusted constructor fills
the instance ``__dict__`` directly (as attrs' own frozen ``__init__`` does for such classes),
where a slotted frozen class costs an ``object.__setattr__`` call, about 1k instructions, per
field; :meth:`QRImage.from_png` checks the PNG inline, with the same rules as
:func:`png_dimensions` and :func:`check_png_end` (their slow paths build the error messages).

:meth:`InstanceState.from_payload` is the one parser of a ``GET /instance/state`` body.

Values and their parsing only: no network, and never imports the client, the transport, the
retry loop or the stream (they import this).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._errors import InvalidImageError, InvalidResponseError, WachatError
from ._files import PathArg, write_bytes
from ._redact import excerpt

__all__ = [
    "PNG_SIGNATURE",
    "InstanceState",
    "QRFailure",
    "QRImage",
    "QRResult",
    "QRSuccess",
    "check_png_chunks",
    "check_png_end",
    "png_dimensions",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_HEADER_LEN = 33  # signature (8) + IHDR length/type (8) + IHDR data (13) + CRC (4)
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
#: A chunk's length and type.
_CHUNK = struct.Struct(">I4s")
#: The header and the first chunk's length and type after it, in one unpack (from_png).
_HEAD_AND_CHUNK = struct.Struct(">16sII5sII4s")
_crc32 = zlib.crc32
_unpack_chunk = _CHUNK.unpack_from
_now = datetime.now
_time = time.time
_new = object.__new__
_setattr = object.__setattr__
_from_timestamp = datetime.fromtimestamp


def png_dimensions(head: bytes, *, instance_name: str | None = None) -> tuple[int, int]:
    """Validate the PNG signature and IHDR chunk at the start of *head*; return (width, height).

    Needs the first 33 bytes. Raises :class:`InvalidImageError` when they are not the start of a
    PNG: wrong signature, first chunk not a 13-byte IHDR, bad CRC, a zero or oversized side, or
    IHDR fields the PNG spec does not allow (a bit depth the colour type does not have, a
    compression or filter method other than 0, an interlace method other than 0 or 1).
    """
    # Fast path (every successful fetch): one prefix test, one unpack, one CRC, one lookup.
    if len(head) >= _HEADER_LEN and head.startswith(_PNG_START):
        width, height, codes, crc = _IHDR_FIELDS.unpack_from(head, 16)
        if (
            zlib.crc32(head[12:29]) == crc
            and 0 < width <= _MAX_DIMENSION
            and 0 < height <= _MAX_DIMENSION
            and codes in _IHDR_CODES
        ):
            return width, height
    raise _png_error(head, instance_name)


def _png_error(head: bytes, instance_name: str | None) -> InvalidImageError:
    """Why *head* is not the start of a valid PNG (the slow path, for the message)."""
    if not head:
        return InvalidImageError("not a PNG: empty body", instance_name=instance_name)
    if len(head) < _HEADER_LEN:
        if PNG_SIGNATURE.startswith(head[:8]):
            return InvalidImageError(
                f"PNG truncated: {len(head)} bytes, too short for its header",
                instance_name=instance_name,
                truncated=True,
            )
        return InvalidImageError("not a PNG: bad signature", instance_name=instance_name)
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


def check_png_chunks(data: bytes, *, instance_name: str | None = None) -> None:
    """Raise :class:`InvalidImageError` unless the chunks of *data* chain from IHDR to IEND.

    For bytes that :func:`png_dimensions` and :func:`check_png_end` accept (a valid header,
    the 12-byte ``IEND`` chunk last): walking the chunks after IHDR by their lengths must land
    exactly on that ``IEND`` (no other ``IEND`` before it, no bytes between chunks), and at
    least one ``IDAT`` chunk must come before it. One unpack per chunk; chunk contents are not
    read (their CRCs are not checked, nor is the image data decompressed).
    """
    error = _chunks_error(data)
    if error is not None:
        raise InvalidImageError(f"not a PNG: {error}", instance_name=instance_name)


def walked_chunks_error(iend_at: int, size: int, idat: bool) -> str | None:
    """:func:`check_png_chunks`' verdict for a body walked piece by piece (``QRStream``):
    *iend_at* is where the walk met its first ``IEND`` chunk (-1: none), *size* the body's
    length, *idat* whether an ``IDAT`` came before that ``IEND``. The same reasons in the same
    order as :func:`check_png_chunks` (None when the chunks chain)."""
    if 0 <= iend_at < size - 12:
        return _IEND_EARLY
    if iend_at != size - 12:
        return _NO_CHAIN
    if not idat:
        return _NO_IDAT
    return None


_IEND_EARLY = "an IEND chunk before the end"
_NO_CHAIN = "chunk lengths do not chain to the IEND trailer"
_NO_IDAT = "no IDAT chunk"


def _chunks_error(data: bytes) -> str | None:
    """Why the chunks after IHDR do not chain to the final ``IEND`` (None when they do)."""
    end = len(data) - 12  # where the final IEND starts
    pos = _HEADER_LEN
    idat = False
    while pos < end:
        length, kind = _unpack_chunk(data, pos)
        if kind == b"IDAT":
            idat = True
        elif kind == b"IEND":
            return _IEND_EARLY
        pos += length + 12
    if pos != end:
        return _NO_CHAIN
    if not idat:
        return _NO_IDAT
    return None


def check_png_end(data: bytes, *, instance_name: str | None = None) -> None:
    """Raise :class:`InvalidImageError` (``truncated``) unless *data* ends with the IEND chunk."""
    if not data.endswith(_IEND):
        raise InvalidImageError(
            "PNG truncated: it does not end with an IEND chunk",
            instance_name=instance_name,
            truncated=True,
        )


def _utcnow() -> datetime:
    return _now(UTC)


def _to_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)  # an immutable, hashable copy
    raise TypeError(f"QRImage data must be bytes, not {type(data).__name__}")


@attrs.frozen(kw_only=True, repr=False, slots=False)
class QRImage:
    """A validated QR code PNG, as returned by ``GET /instance/qr/image``.

    Every way of building one validates *data* as a complete PNG (signature; IHDR with its
    CRC, sides of 1..2**31-1 and fields the spec allows; chunks chaining by their lengths to
    the final ``IEND``, at least one ``IDAT``; see :func:`check_png_chunks`) and raises
    :class:`InvalidImageError` otherwise: :meth:`from_png`, ``QRImage(...)`` and
    ``attrs.evolve``. ``width`` and ``height`` come from the PNG header: leave them out (or 0)
    to take them from it; values that disagree with the header are refused. ``repr()``
    summarises the image and never dumps its bytes; in Jupyter the image is shown inline
    (``_repr_png_``).
    """

    instance_name: str
    data: bytes = attrs.field(repr=False, converter=_to_bytes)
    content_type: str = "image/png"
    width: int = 0
    height: int = 0
    fetched_at: datetime = attrs.field(factory=_utcnow)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.instance_name, str):
            raise TypeError(
                f"QRImage instance_name must be a str, got a {type(self.instance_name).__name__}"
            )
        if not isinstance(self.content_type, str) or self.content_type.lower() != "image/png":
            raise InvalidImageError(
                "QRImage content_type must be 'image/png'", instance_name=self.instance_name
            )
        fetched = self.fetched_at
        if not isinstance(fetched, datetime) or fetched.utcoffset() is None:
            kind = "naive datetime" if isinstance(fetched, datetime) else type(fetched).__name__
            raise TypeError(f"QRImage fetched_at must be a timezone-aware datetime, got a {kind}")
        width, height = png_dimensions(self.data, instance_name=self.instance_name)
        check_png_end(self.data, instance_name=self.instance_name)
        check_png_chunks(self.data, instance_name=self.instance_name)
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
    def _trusted(
        cls,
        *,
        instance_name: str,
        data: bytes,
        width: int,
        height: int,
        content_type: str = "image/png",
        fetched_at: datetime | None = None,
    ) -> QRImage:
        """Wrap bytes that were already validated (by :meth:`from_png` or a finished
        ``QRStream``, which checked the header, the chunks and the ``IEND`` trailer) without
        checking them again. Private: for the library's own success path only."""
        self = object.__new__(cls)
        fields = self.__dict__  # frozen only against setattr; attrs fills it the same way
        fields["instance_name"] = instance_name
        fields["data"] = data
        fields["content_type"] = content_type
        fields["width"] = width
        fields["height"] = height
        if fetched_at is None:
            fields["_fetched"] = _time()  # made a datetime on first use (see __getattr__)
        else:
            fields["fetched_at"] = fetched_at
        return self

    @classmethod
    def from_png(
        cls,
        data: bytes,
        *,
        instance_name: str,
        content_type: str = "image/png",
        fetched_at: datetime | None = None,
    ) -> QRImage:
        """Validate *data* as a complete PNG and wrap it. Raises :class:`InvalidImageError`.

        The checks are :func:`png_dimensions`', :func:`check_png_end`'s and
        :func:`check_png_chunks`' (signature, a 13-byte IHDR first with a good CRC, sides in
        1..2**31-1 and fields the spec allows, chunks chaining by their lengths to ``IEND``
        last, at least one ``IDAT``), done inline.
        """
        if type(data) is not bytes:
            data = _to_bytes(data)
        try:
            start, width, height, codes, crc, length, kind = _HEAD_AND_CHUNK.unpack_from(data)
        except struct.error:  # under 41 bytes: never a whole PNG (57 at least)
            start = b""
        if (
            start == _PNG_START
            and _crc32(data[12:29]) == crc
            and 0 < width <= _MAX_DIMENSION
            and 0 < height <= _MAX_DIMENSION
            and codes in _IHDR_CODES
            and data[-12:] == _IEND
        ):
            # The chunk walk: a single IDAT reaching the final IEND (the usual QR) is read
            # off the same unpack; anything else is walked chunk by chunk.
            if (kind != b"IDAT" or length + 57 != len(data)) and _chunks_error(data):
                check_png_chunks(data, instance_name=instance_name)  # raises, with the reason
        else:
            # The slow path: raise the precise error.
            width, height = png_dimensions(data, instance_name=instance_name)
            check_png_end(data, instance_name=instance_name)
            check_png_chunks(data, instance_name=instance_name)
        self = _new(cls)
        # The whole instance dict in one go (frozen only against setattr, as in _trusted).
        fields = {
            "instance_name": instance_name,
            "data": data,
            "content_type": content_type,
            "width": width,
            "height": height,
        }
        if fetched_at is None:
            fields["_fetched"] = _time()  # made a datetime on first use (see __getattr__)
        else:
            fields["fetched_at"] = fetched_at
        _setattr(self, "__dict__", fields)
        return self

    if not TYPE_CHECKING:  # type checkers see the fields only

        def __getattr__(self, name: str) -> Any:
            # Only for an attribute missing from the instance: the ``fetched_at`` of an image
            # made by from_png or _trusted is kept as the clock reading of its fetch and made
            # a datetime the first time it is read (datetime.now() costs about 2k
            # instructions, time.time() 0.4k: most fetched images are never asked).
            if name == "fetched_at":
                fields = self.__dict__
                stamp = fields.get("_fetched")
                if stamp is not None:
                    fields["fetched_at"] = value = _from_timestamp(stamp, UTC)
                    return value
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the PNG bytes: equal digests mean the same QR image."""
        return hashlib.sha256(self.data).hexdigest()

    def to_data_uri(self) -> str:
        """A ``data:image/png;base64,...`` URI for ``<img src>``.

        This is the safe way to show a QR in a page: the image is fetched server-side with the
        Authorization header and inlined, so the API key never reaches the browser.
        """
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")

    def save(self, path: PathArg) -> Path:
        """Write the PNG to *path* atomically and durably; return ``Path(path)``.

        A regular file (or a new one) is written to a temporary file in the same folder,
        fsynced and renamed into place, then the folder is fsynced: never a partial file, and
        no temporary file is left on any error. A new file is readable by its owner only (mode
        0600: whoever scans the QR links a phone to the instance); a replaced file keeps its
        mode. A symlink is followed (the PNG lands at its target; the link stays). A device or
        FIFO (``/dev/null``, a named pipe) is written to directly, never replaced. A folder,
        a socket or a missing parent folder raises an :class:`OSError` that names *path*.
        ``~`` is not expanded.

        Blocking (the fsyncs wait for the disk; a FIFO with no reader waits for one, like
        ``open()``). In async code prefer ``WachatClient.save_qr_image``, which streams from
        the network and keeps all disk waits off the event loop.
        """
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
    """An attrs validator like ``attrs.validators.instance_of`` whose message names types only:
    attrs' own quotes the value's repr (a PNG's bytes, an error's text) in the message and
    keeps the value in the exception's ``args``."""

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
    """The outcome of fetching one instance's QR in a batch: exactly one of ``image`` and
    ``error`` is set.

    Every result is one of two subclasses: :class:`QRSuccess` (``ok`` is ``True``, ``image`` a
    :class:`QRImage`, ``error`` ``None``) or :class:`QRFailure` (``ok`` is ``False``, ``error`` a
    :class:`WachatError`, ``image`` ``None``). Calling ``QRResult(...)`` builds the right one,
    so ``QRResult(instance_name=n, image=qr)`` and ``isinstance(result, QRResult)`` work as they
    always did. :meth:`WachatClient.fetch_many` yields ``QRSuccess | QRFailure``, so a type checker
    narrows on the obvious check::

        async for result in client.fetch_many(names):
            if result.ok:  # mypy: result is a QRSuccess here
                result.image.save(f"{result.instance_name}.png")
            else:  # a QRFailure
                log.warning("%s: %s", result.instance_name, result.error)

    mypy narrows on ``if result.ok:``; pyright does not narrow on the truth of an attribute,
    but both narrow on ``isinstance(result, QRSuccess)``, ``result.ok is True``,
    ``result.error is None`` and ``result.image is not None``. A value annotated as plain
    ``QRResult`` is not narrowed by ``result.ok``: annotate it ``QRSuccess | QRFailure``.
    """

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
    """An instance's connection state from ``GET /instance/state``.

    ``state`` is kept as the API sent it (``"open"``, ``"connecting"``, ``"close"`` or anything
    new); only ``"open"`` counts as connected.
    """

    instance_name: str
    state: str
    integration: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_payload(
        cls, payload: object, *, instance_name: str, secrets: Iterable[str] = ()
    ) -> InstanceState:
        """Read the state out of a ``GET /instance/state`` body.

        *payload* is the body as sent (``bytes`` or ``str``, decoded as JSON here) or the JSON
        value already decoded. The state is ``instance.state``, or ``data.instance.state`` as
        some gateways wrap it; ``integration`` is ``instance.integration`` when it is a
        string. Anything else (not JSON, nested too deeply, no state string) raises
        :class:`InvalidResponseError` quoting a short excerpt of the body, with *secrets*
        (the API key) redacted from it. Untrusted JSON never raises anything else::

            >>> InstanceState.from_payload(b'{"instance": {"state": "open"}}',
            ...                            instance_name="t1").is_connected
            True
        """
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
    """``obj[key]`` when both are JSON objects, else an empty dict: untrusted JSON never
    raises while we look for the state."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}
