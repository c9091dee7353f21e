"""Terminal QR rendering (wachat_async.cli._terminal): a PNG's module grid, then half blocks."""

from __future__ import annotations

import io

import pytest
import segno
from PIL import Image

from wachat_async.cli import qr_modules, render_half_blocks


@pytest.mark.parametrize(
    ("scale", "border", "resize", "mode"),
    [
        pytest.param(1, 0, None, "L", id="scale-1-no-border"),
        pytest.param(4, 4, None, "L", id="scale-4"),
        pytest.param(3, 1, (173, 173, Image.Resampling.NEAREST), "L", id="non-integer-scale"),
        pytest.param(4, 4, (173, 173, Image.Resampling.BILINEAR), "L", id="bilinear"),
        pytest.param(4, 4, (250, 250, Image.Resampling.BICUBIC), "L", id="bicubic-anti-aliased"),
        pytest.param(8, 4, (300, 300, Image.Resampling.LANCZOS), "L", id="lanczos-anti-aliased"),
        pytest.param(5, 2, None, "RGBA", id="transparent-background"),
        pytest.param(2, 4, None, "P", id="palette"),
    ],
)
def test_qr_modules_recovers_the_matrix(
    scale: int, border: int, resize: tuple[int, int, Image.Resampling] | None, mode: str
) -> None:
    """Any module size, quiet zone, smoothing or colour mode gives back segno's own matrix."""
    qr = segno.make_qr("wachat-fake:t1_abc_store:7", error="m")
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=border)
    picture = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    if resize is not None:
        width, height, resample = resize
        picture = picture.resize((width, height), resample)
    if mode == "RGBA":
        rgba = Image.new("RGBA", picture.size, (0, 0, 0, 0))
        rgba.putalpha(picture.point(lambda v: 255 if v < 128 else 0))
        picture = rgba
    elif mode == "P":
        picture = picture.convert("P")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    expected = [[bool(m) for m in row] for row in qr.matrix]
    assert qr_modules(out.getvalue()) == expected


@pytest.mark.parametrize(
    ("paint", "message"),
    [
        pytest.param([], "no dark pixels", id="blank"),
        pytest.param([(10, 10, 12, 12)], "finder pattern", id="a-dot"),
    ],
)
def test_qr_modules_rejects_an_image_without_a_qr(
    paint: list[tuple[int, int, int, int]], message: str
) -> None:
    """A blank image or a dark dot is not a QR code: ValueError saying why."""
    picture = Image.new("L", (30, 30), 255)
    for box in paint:
        picture.paste(0, box)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    with pytest.raises(ValueError, match=message):
        qr_modules(out.getvalue())


def test_qr_modules_samples_an_odd_sized_symbol_at_its_own_size() -> None:
    """A symbol whose size is no QR size is sampled at the size it measures."""
    picture = Image.new("L", (43, 43), 255)
    picture.paste(0, (0, 0, 7, 1))  # a 7-module run in the corner: module size 1
    picture.paste(0, (42, 42, 43, 43))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    modules = qr_modules(out.getvalue())
    assert len(modules) == 43
    assert modules[0][:8] == [True] * 7 + [False]


def test_render_half_blocks_glyphs() -> None:
    """Each character stacks two modules; the light ones are drawn unless inverted."""
    modules = [[True, False], [False, False], [True, True]]
    assert render_half_blocks(modules, border=0) == "▄█\n  \n"
    assert render_half_blocks(modules, border=0, invert=True) == "▀ \n▀▀\n"
    colored = render_half_blocks(modules, border=0, color=True)
    assert colored == "\x1b[30;107m▀ \x1b[0m\n\x1b[30;107m▀▀\x1b[0m\n"


@pytest.mark.parametrize("border", [0, 1, 2, 5])
@pytest.mark.parametrize("size", [1, 2, 3, 21])
def test_render_half_blocks_size(size: int, border: int) -> None:
    """Width = modules + 2 * border; lines = half the rows, rounded up; always a final newline."""
    text = render_half_blocks([[True] * size] * size, border=border)
    lines = text.split("\n")
    assert lines.pop() == ""
    assert {len(line) for line in lines} == {size + 2 * border}
    assert len(lines) == (size + 2 * border + 1) // 2


def test_render_half_blocks_of_an_empty_grid_is_the_quiet_zone() -> None:
    """No modules: just the border, drawn light."""
    assert render_half_blocks([], border=1) == "██\n"
