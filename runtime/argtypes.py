"""Value parsers for the command line's options, shared by every edgetile subcommand.

Each returns an argparse type function whose error names the option, what was expected and what was
found, so a bad value ends in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def number_in(name: str, lo: float = 0.0, hi: float = 1.0, hi_open: bool = False) -> Callable[[str], float]:
    """A number in [lo, hi] (or [lo, hi) with hi_open)."""
    span = f"[{lo}, {hi}{')' if hi_open else ']'}"

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span} for {name}, found {s!r}") from None
        if not (lo <= v < hi if hi_open else lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"expected a number in {span} for {name}, found {s}")
        return v

    return parse


def int_at_least(name: str, minimum: int = 1) -> Callable[[str], int]:
    """An integer of at least minimum."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum} for {name}, found {s!r}"
            ) from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} for {name}, found {v}")
        return v

    return parse


def finite_number(name: str, minimum: float = 0.0, inclusive: bool = True) -> Callable[[str], float]:
    """A finite number >= minimum (> minimum when not inclusive)."""
    return _finite(name, minimum, inclusive, f"a finite number {'>=' if inclusive else '>'} {minimum:g}")


def number_or_word(name: str, word: str, what: str, minimum: float = 0.0) -> Callable[[str], float | None]:
    """A finite number >= minimum, or a word (any case) that stands for none of it, parsed as None.

    Args:
        word: E.g. "unlimited".
        what: The number in the field's words, for the message (e.g. "a number of GiB").
    """
    number = _finite(name, minimum, True, f"{what} >= {minimum:g} or {word!r}")

    def parse(s: str) -> float | None:
        return None if s.strip().lower() == word else number(s)

    return parse


def _finite(name: str, minimum: float, inclusive: bool, expected: str) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected} for {name}, found {s!r}") from None
        if not math.isfinite(v) or not (v >= minimum if inclusive else v > minimum):
            raise argparse.ArgumentTypeError(f"expected {expected} for {name}, found {s}")
        return v

    return parse


def positive_number(name: str, maximum: float = math.inf) -> Callable[[str], float]:
    """A finite number > 0 (and <= maximum, when one is given)."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number for {name}, found {s!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number for {name}, found {s}")
        if v > maximum:
            raise argparse.ArgumentTypeError(
                f"expected a positive number <= {maximum:g} for {name}, found {s}"
            )
        return v

    return parse


def add_read_ahead_option(group) -> None:
    """``--read-ahead MB``, shared by detect and serve: the next photo decoded while this one is detected."""
    from .readahead import READ_AHEAD_MB

    group.add_argument(
        "--read-ahead",
        type=int_at_least("--read-ahead", 0),
        default=None,
        metavar="MB",
        help="decode the next photo on a thread while this one is detected, when it takes at most "
        "MB decoded (a 4000x3000 photo takes 36); larger ones are read in their turn, so a "
        "huge photo is never held twice; 0 turns it off (default: "
        f"{READ_AHEAD_MB} when the model runs on a GPU; 0 on the CPU, where a decode beside "
        "inference slows both)",
    )


def pixel_count(s: str) -> int | None:
    """--max-pixels: a number of pixels >= 1 (``120e6`` is accepted), or 0 / 'unlimited' for no limit."""
    if s.strip().lower() == "unlimited":
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels (e.g. 120e6), 0 or 'unlimited' for --max-pixels, found {s!r}"
        ) from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels (e.g. 120e6), 0 or 'unlimited' for --max-pixels, found {s}"
        )
    return int(v) or None


def add_max_pixels_option(group) -> None:
    """``--max-pixels N``, shared by detect and serve: photos larger than this are refused unread."""
    from .images import MAX_PIXELS

    group.add_argument(
        "--max-pixels",
        type=pixel_count,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse a photo whose header claims more than N pixels (width x height) before "
        "decoding it, so that a small file claiming 60000x60000 cannot take the memory; a "
        "photo is decoded into 3 bytes a pixel (4000x3000: 36 MB). 0 or 'unlimited' for no "
        f"limit, e.g. for orthomosaics (default: {MAX_PIXELS:.3g}, a 100 MP camera with room)",
    )
