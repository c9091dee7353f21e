"""Helpers of the CLI tests: the outcome of one run, and reading a QR back from terminal text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import zxingcpp
from PIL import Image

from tests.conftest import KEY
from wachat_async.testing import FakeWachatServer

OTHER = "t1_zz9r2jov_bandung_store"


def instance_rows(out: str) -> list[dict[str, object]]:
    """The per-instance records of ``poll --json``'s *out*, checking that the last line is the
    summary record."""
    *rows, last = (json.loads(line) for line in out.split("\n") if line)
    assert set(last) == {"summary"}, last
    return rows


class Run:
    """The outcome of one main() call."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err


def terminal_to_image(text: str, *, invert: bool = False, scale: int = 6) -> Image.Image:
    """Rebuild a picture from half-block text: each character is two stacked modules."""
    lines = text.rstrip("\n").split("\n")
    width = max(len(line) for line in lines)
    rows: list[list[bool]] = []
    for line in lines:
        padded = line.ljust(width)
        rows.append([c in "█▀" for c in padded])
        rows.append([c in "█▄" for c in padded])
    # The drawn characters are the light modules (dark ones with --invert); the terminal
    # background is the other colour. Add a margin of background around it all.
    margin = 2
    picture = Image.new("L", ((width + 2 * margin) * scale, (len(rows) + 2 * margin) * scale))
    background, ink = (255, 0) if invert else (0, 255)
    picture.paste(background, (0, 0, picture.width, picture.height))
    for r, row in enumerate(rows):
        for c, inked in enumerate(row):
            if inked:
                x, y = (c + margin) * scale, (r + margin) * scale
                picture.paste(ink, (x, y, x + scale, y + scale))
    return picture


def decode(picture: Image.Image) -> str:
    """The text of the one QR code in *picture*."""
    found = zxingcpp.read_barcodes(picture)
    assert len(found) == 1, f"expected one QR code, found {len(found)}"
    return found[0].text


def cli_process(
    argv: list[str],
    server: FakeWachatServer,
    *,
    env_extra: dict[str, str] | None = None,
    text: bool = True,
    **kwargs: object,
) -> subprocess.Popen[str]:
    """``python -m wachat_async ARGV`` in a real process, with the key and base URL of *server*."""
    environ = {**os.environ, "WACHAT_API_KEY": KEY, "WACHAT_BASE_URL": server.base_url}
    environ.update(env_extra or {})
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "wachat_async", *argv],
        env=environ,
        text=text,
        **kwargs,  # type: ignore[call-overload]
    )
