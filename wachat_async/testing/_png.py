"""The fake server's QR codes: the text each one encodes, and drawing it as a PNG.

:func:`qr_payload` says what an instance's QR encodes at one rotation; :func:`render_qr_png`
draws it (segno for the QR matrix, a small writer of our own for the PNG); :class:`PngCache`
keeps the last PNG per instance, so a fleet of 10,000 instances polled thousands of times a
second costs one render per instance and rotation.

Pure computation: this module never imports aiohttp, the server or the client and does no I/O.
segno (the ``testing`` extra) is imported only when a QR is drawn or checked for, so importing
this module never fails.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence

__all__ = [
    "INSTALL_HINT",
    "PngCache",
    "matrix_to_png",
    "qr_payload",
    "render_qr_png",
    "require_segno",
]

INSTALL_HINT = "segno is required to render QR codes: pip install 'wachat-async[testing]'"

# Payloads above this many UTF-8 bytes are replaced by a digest so the QR always fits.
_MAX_PAYLOAD_BYTES = 1000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def qr_payload(name: str, generation: int) -> str:
    """The text the QR of instance *name* encodes at rotation *generation*.

    ``wachat-fake:NAME:GENERATION``; a name too long for a QR code, or one that is not valid
    text (lone surrogates have no UTF-8), is replaced by its SHA-256.
    """
    payload = f"wachat-fake:{name}:{generation}"
    try:
        if len(payload.encode("utf-8")) <= _MAX_PAYLOAD_BYTES:
            return payload
    except UnicodeEncodeError:
        pass
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"wachat-fake:sha256={digest}:{generation}"


def require_segno() -> None:
    """Raise :class:`ImportError` with the install command unless segno can be imported."""
    try:
        import segno  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT, name="segno") from exc


def render_qr_png(payload: str) -> bytes:
    """A scannable QR code PNG for *payload* (ImportError naming the extra without segno)."""
    try:
        import segno
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    # make_qr: never a Micro QR, which phones do not read. A fixed mask skips segno's mask
    # scoring (80% of its encoding time); every mask is valid, readers handle all eight.
    qr = segno.make_qr(payload, error="m", mask=0)
    return matrix_to_png(qr.matrix)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def matrix_to_png(matrix: Sequence[Sequence[int]], *, scale: int = 4, border: int = 4) -> bytes:
    """Encode a QR module matrix (truthy = dark) as a 1-bit greyscale PNG.

    segno's own PNG writer is general and about as slow as the QR encoding itself; this one
    only knows squares, which is all a QR code needs. *border* modules of quiet zone surround
    the code; every module is *scale* pixels wide.
    """
    width = (len(matrix) + 2 * border) * scale
    row_bytes = (width + 7) // 8
    padding = "1" * (row_bytes * 8 - width)
    dark, light = "0" * scale, "1" * scale  # greyscale bit 0 is black
    edge = light * border
    quiet_row = b"\x00" + b"\xff" * row_bytes  # filter type 0, then white pixels
    rows = [quiet_row] * (border * scale)
    for modules in matrix:
        bits = edge + "".join(dark if m else light for m in modules) + edge + padding
        rows.extend([b"\x00" + int(bits, 2).to_bytes(row_bytes, "big")] * scale)
    rows.extend([quiet_row] * (border * scale))
    header = struct.pack(">IIBBBBB", width, width, 1, 0, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)),
            _png_chunk(b"IEND", b""),
        )
    )


class PngCache:
    """The last PNG drawn for each instance, redrawn only when its payload changes.

    Used from the server's loop (``png``) and from any thread (``forget``): each is a single
    dictionary operation, which needs no lock.
    """

    def __init__(self) -> None:
        self._pngs: dict[str, tuple[str, bytes]] = {}

    def png(self, name: str, payload: str) -> bytes:
        """The PNG of *payload* for instance *name*, drawn at most once per payload."""
        cached = self._pngs.get(name)
        if cached is not None and cached[0] == payload:
            return cached[1]
        png = render_qr_png(payload)
        self._pngs[name] = (payload, png)
        return png

    def forget(self, name: str) -> None:
        """Drop *name*'s PNG (the instance was removed)."""
        self._pngs.pop(name, None)
