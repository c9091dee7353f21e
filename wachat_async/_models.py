"""Value objects: the QR image, a per-instance polling result, an instance's state.

All are frozen attrs classes. ``QRImage`` checks that its bytes are a complete PNG when it is
built, so holding one means holding a valid image.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import attrs

from ._errors import InvalidImageError, WachatError

__all__ = [
    "PNG_SIGNATURE",
    "InstanceState",
    "QRFailure",
    "QRImage",
    "QRResult",
    "QRSuccess",
    "png_dimensions",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_HEADER_LEN = 33  # signature (8) + IHDR length/type (8) + IHDR data (13) + CRC (4)
_PNG_START = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR"  # signature, then a 13-byte IHDR
_IHDR_FIELDS = struct.Struct(">II5xI")  # width, height, (depth..interlace), CRC
_MAX_DIMENSION = 2**31 - 1  # the PNG spec's limit


def png_dimensions(head: bytes, *, instance_name: str | None = None) -> tuple[int, int]:
    """Validate the PNG signature and IHDR chunk at the start of *head*; return (width, height).

    Needs the first 33 bytes. Raises :class:`InvalidImageError` when they are not the start of a
    PNG: wrong signature, first chunk not a 13-byte IHDR, bad CRC, or a zero or oversized side.
    """
    # Fast path (every successful fetch): one prefix test, one unpack, one CRC.
    if len(head) >= _HEADER_LEN and head.startswith(_PNG_START):
        width, height, crc = _IHDR_FIELDS.unpack_from(head, 16)
        if (
            zlib.crc32(head[12:29]) == crc
            and 0 < width <= _MAX_DIMENSION
            and 0 < height <= _MAX_DIMENSION
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
    width, height, crc = _IHDR_FIELDS.unpack_from(head, 16)
    if zlib.crc32(head[12:29]) != crc:
        return InvalidImageError("not a PNG: IHDR checksum mismatch", instance_name=instance_name)
    return InvalidImageError(
        f"not a PNG: invalid dimensions {width}x{height}", instance_name=instance_name
    )


def check_png_end(data: bytes, *, instance_name: str | None = None) -> None:
    """Raise :class:`InvalidImageError` (``truncated``) unless *data* ends with the IEND chunk."""
    if not data.endswith(_IEND):
        raise InvalidImageError(
            "PNG truncated: it does not end with an IEND chunk",
            instance_name=instance_name,
            truncated=True,
        )


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@attrs.frozen(kw_only=True, repr=False)
class QRImage:
    """A validated QR code PNG, as returned by ``GET /instance/qr/image``.

    Build one with :meth:`from_png` (which validates); ``width`` and ``height`` come from the PNG
    header. ``repr()`` summarises the image and never dumps its bytes; in Jupyter the image is
    shown inline (``_repr_png_``).
    """

    instance_name: str
    data: bytes = attrs.field(repr=False)
    content_type: str = "image/png"
    width: int
    height: int
    fetched_at: datetime = attrs.field(factory=_utcnow)

    @classmethod
    def from_png(
        cls,
        data: bytes,
        *,
        instance_name: str,
        content_type: str = "image/png",
        fetched_at: datetime | None = None,
    ) -> QRImage:
        """Validate *data* as a complete PNG and wrap it. Raises :class:`InvalidImageError`."""
        width, height = png_dimensions(data, instance_name=instance_name)
        check_png_end(data, instance_name=instance_name)
        return cls(
            instance_name=instance_name,
            data=data,
            content_type=content_type,
            width=width,
            height=height,
            fetched_at=_utcnow() if fetched_at is None else fetched_at,
        )

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

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG to *path* atomically (temp file in the same folder, then rename).

        Blocking, but the write is a few kilobytes; use ``WachatClient.save_qr_image`` to
        stream straight from the network to disk. The file is readable by its owner only
        (mode 0600): whoever scans the QR links a phone to the instance.
        """
        target = Path(path)
        _write_atomically(target, self.data)
        return target

    def _repr_png_(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return (
            f"QRImage(instance_name={self.instance_name!r}, {self.width}x{self.height} PNG, "
            f"{len(self.data)} bytes, sha256={self.sha256[:12]}…, "
            f"fetched_at={self.fetched_at.isoformat()})"
        )


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

    image: QRImage = attrs.field(validator=attrs.validators.instance_of(QRImage))
    error: None = attrs.field(default=None, validator=_exactly_one)

    @property
    def ok(self) -> Literal[True]:
        """Always ``True``."""
        return True


@attrs.frozen(kw_only=True)
class QRFailure(QRResult):
    """A :class:`QRResult` whose fetch failed: ``error`` is set, ``image`` is ``None``."""

    image: None = None
    error: WachatError = attrs.field(
        validator=[_exactly_one, attrs.validators.instance_of(WachatError)]
    )

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

    @property
    def is_connected(self) -> bool:
        """True once the phone is linked (state ``"open"``)."""
        return self.state == "open"
