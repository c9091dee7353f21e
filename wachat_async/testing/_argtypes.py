"""The argparse types both command lines use: ``wachat-qr`` and the fake server's program.

Each type checks a value as it is parsed and states the true bound when it refuses one, so
``--retries -2`` says ``from 0 to 100`` (not ``>= 1``). They live here, beside the fake server,
because the fake server imports nothing of wachat-async outside ``testing/`` while ``cli/`` may
import ``testing/``: this is the one place both may share. Pure: no I/O, no other module.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["integer", "seconds"]


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer option whose error states the true bounds."""
    bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    return parse


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type for a finite number of seconds, > 0 (or >= 0 when *zero*)."""
    bound = ">= 0" if zero else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse
