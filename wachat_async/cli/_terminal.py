"""Drawing a QR code in a terminal: a PNG's module grid, then Unicode half blocks.

:func:`qr_modules` reads the grid out of any QR PNG (any scale, quiet zone, smoothing or colour
mode); :func:`render_half_blocks` draws a grid as text, two module rows per line, in plain
characters or in black-on-white ANSI colours.

Pure rendering, bytes in and text out: never writes to a stream, never reads the environment
or a file, never makes a request. Pillow is imported only when :func:`qr_modules` runs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from ._extras import need

__all__ = ["qr_modules", "render_half_blocks"]

_UPPER, _LOWER, _FULL = "\u2580", "\u2584", "\u2588"  # ▀ ▄ █


def qr_modules(png: bytes) -> list[list[bool]]:
    """Read a QR code PNG into its module grid (``True`` = dark), with Pillow.

    The symbol is the bounding box of the dark pixels; the module size comes from the top-left
    finder pattern (7 modules wide), snapped to a real QR size (21 + 4k modules), and each
    module is sampled at its centre, so any scale (even a non-integer one), smoothing from a
    resize, and any quiet zone work. Transparent pixels count as white. Raises ``ValueError``
    when no QR-like symbol is found.
    """
    need("PIL")
    from PIL import Image

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    background.alpha_composite(image)
    grey = background.convert("L")
    mask = grey.point(lambda v: 255 if v < 128 else 0)
    box = mask.getbbox()
    if box is None:
        raise ValueError("the image has no dark pixels: not a QR code")
    left, top, right, bottom = box
    pixels = grey.load()
    assert pixels is not None

    def dark(x: float, y: float) -> bool:
        value = pixels[int(x), int(y)]
        assert isinstance(value, int)
        return value < 128

    def run_from_left(y: int) -> int:
        x = left
        while x < right and not dark(x, y):  # an anti-aliased corner may start light
            x += 1
        start = x
        while x < right and dark(x, y):
            x += 1
        return x - start

    # The finder's first module row is 7 modules of solid dark: take the longest run over the
    # rows a module can span (a smoothed, scaled image blurs the very first row).
    first_module_rows = max(1, (bottom - top) // 21)
    run = max(run_from_left(y) for y in range(top, min(bottom, top + first_module_rows + 1)))
    if run < 7:
        raise ValueError("no QR finder pattern in the top-left corner of the image")
    estimate = (right - left) / (run / 7)
    version = min(40, max(1, round((estimate - 17) / 4)))
    size = 17 + 4 * version
    if abs(size - estimate) > 1.5:
        size = max(1, round(estimate))
    step_x = (right - left) / size
    step_y = (bottom - top) / size
    return [
        [dark(left + (col + 0.5) * step_x, top + (row + 0.5) * step_y) for col in range(size)]
        for row in range(size)
    ]


#: Black on bright white: the code reads right whatever the terminal's own colours are.
_ANSI_QR, _ANSI_RESET = "\x1b[30;107m", "\x1b[0m"


def render_half_blocks(
    modules: Sequence[Sequence[bool]],
    *,
    border: int = 2,
    invert: bool = False,
    color: bool = False,
) -> str:
    """Draw a module grid with Unicode half blocks: one module per column, two rows per line.

    Without *color* the characters draw the *light* modules (and a quiet zone of *border*
    modules), so the code reads right on the usual light-on-dark terminal; *invert* draws the
    dark modules instead, for dark-on-light terminals. With *color* each line is wrapped in ANSI
    codes for black on white and the dark modules are drawn, which reads right on any terminal
    that has colours (*invert* is then ignored). Returns the lines joined by ``\\n``, ending
    with one.
    """
    rows = len(modules)
    cols = len(modules[0]) if rows else 0
    height, width = rows + 2 * border, cols + 2 * border
    draw_dark = invert or color

    def ink(row: int, col: int) -> bool:
        if row >= height:
            return False  # below the last row: plain terminal background
        r, c = row - border, col - border
        is_dark = 0 <= r < rows and 0 <= c < cols and bool(modules[r][c])
        return is_dark if draw_dark else not is_dark

    glyphs = {(True, True): _FULL, (True, False): _UPPER, (False, True): _LOWER}
    lines = [
        "".join(glyphs.get((ink(row, col), ink(row + 1, col)), " ") for col in range(width))
        for row in range(0, height, 2)
    ]
    if color:
        lines = [f"{_ANSI_QR}{line}{_ANSI_RESET}" for line in lines]
    return "\n".join(lines) + "\n"
