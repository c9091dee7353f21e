"""QR images (``wachat_async.testing._png``): payloads, the PNG writer, rendering, the cache."""

from __future__ import annotations

import io
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from wachat_async.testing import _png
from wachat_async.testing._png import PngCache, matrix_to_png, qr_payload, render_qr_png

from ._support import PNG_SIGNATURE, decode_qr


@pytest.mark.parametrize(
    ("name", "generation", "expected"),
    [
        ("t1_abc_store", 0, "wachat-fake:t1_abc_store:0"),
        ("a&b=c", 7, "wachat-fake:a&b=c:7"),
        ("ünïcødé-店", 2, "wachat-fake:ünïcødé-店:2"),
    ],
    ids=["plain", "query-characters", "unicode"],
)
def test_payload_names_the_instance_and_generation(
    name: str, generation: int, expected: str
) -> None:
    """The payload is wachat-fake:NAME:GENERATION, the name verbatim."""
    assert qr_payload(name, generation) == expected


@pytest.mark.parametrize(
    "name",
    ["n" * 3000, "店" * 400, "a\udc80b", "\ud800" * 10],
    ids=["long-ascii", "long-multibyte", "lone-surrogate", "surrogates-only"],
)
def test_unencodable_name_gets_a_digest_payload(name: str) -> None:
    """A name too long for a QR code, or with no UTF-8 form, is replaced by its SHA-256."""
    payload = qr_payload(name, 3)
    assert re.fullmatch(r"wachat-fake:sha256=[0-9a-f]{64}:3", payload)
    assert payload == qr_payload(name, 3) != qr_payload(name + "x", 3)
    assert decode_qr(render_qr_png(payload)) == payload


@pytest.mark.parametrize(
    "payload",
    ["wachat-fake:t1_abc_store:0", "wachat-fake:ünïcødé-店:9", "x" * 1000],
    ids=["short", "unicode", "longest-allowed"],
)
def test_rendered_png_scans_to_its_payload(payload: str) -> None:
    """zxing reads the payload back from the rendered PNG."""
    png = render_qr_png(payload)
    assert (png[:8], decode_qr(png)) == (PNG_SIGNATURE, payload)


@settings(max_examples=40, deadline=None)
@given(
    matrix=st.integers(1, 12).flatmap(
        lambda n: st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=n, max_size=n)
    ),
    scale=st.integers(1, 5),
    border=st.integers(0, 4),
)
def test_png_writer_draws_every_module(matrix: list[list[bool]], scale: int, border: int) -> None:
    """Each module is a scale x scale square (dark = black) inside a white quiet zone."""
    image = Image.open(io.BytesIO(matrix_to_png(matrix, scale=scale, border=border)))
    side = (len(matrix) + 2 * border) * scale
    assert (image.size, image.mode) == ((side, side), "1")
    pixels = image.load()
    assert pixels is not None
    for y in range(side):
        for x in range(side):
            row, col = y // scale - border, x // scale - border
            inside = 0 <= row < len(matrix) and 0 <= col < len(matrix)
            assert pixels[x, y] == (0 if inside and matrix[row][col] else 255), (x, y)


def test_missing_segno_is_an_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without segno both the check and the renderer say how to install it."""
    monkeypatch.setitem(sys.modules, "segno", None)
    hint = re.escape("pip install 'wachat-async[testing]'")
    with pytest.raises(ImportError, match=hint) as checked:
        _png.require_segno()
    with pytest.raises(ImportError, match=hint):
        render_qr_png("x")
    assert checked.value.name == "segno"


def test_cache_draws_once_per_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same payload is drawn once; a new payload (rotation) is drawn again."""
    drawn: list[str] = []
    monkeypatch.setattr(_png, "render_qr_png", lambda p: drawn.append(p) or p.encode())
    cache = PngCache()
    pngs = [cache.png("a", "p0"), cache.png("a", "p0"), cache.png("b", "p0"), cache.png("a", "p1")]
    assert (pngs, drawn) == ([b"p0", b"p0", b"p0", b"p1"], ["p0", "p0", "p1"])


def test_cache_forgets_removed_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """forget() drops one instance's PNG (forgetting an unknown one is harmless)."""
    drawn: list[str] = []
    monkeypatch.setattr(_png, "render_qr_png", lambda p: drawn.append(p) or p.encode())
    cache = PngCache()
    cache.png("a", "p0")
    cache.forget("a")
    cache.forget("never-drawn")
    cache.png("a", "p0")
    assert drawn == ["p0", "p0"]
