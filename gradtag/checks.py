"""Flag types that validate at parse time: one rule per kind of number, and one for a file to write, shared by every
script's flags.

``type=POSITIVE_INT`` (and the others) turns a bad value into argparse's error, which the scripts' parser
(:class:`ArgumentParser` below) prints as one line with exit status 2, before any file is touched.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path


def number(
    kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> Callable[[str], float]:
    """An argparse ``type`` parsing ``kind`` (int or float) within ``[low, high]`` (``open_*``: that end excluded).

    Floats must be finite. The error names the rule broken, e.g. ``must be an integer >= 1, got 0``.
    """
    left = "(" if open_low else "["
    right = ")" if open_high else "]"
    noun = "an integer" if kind is int else "a finite number"
    if low is not None and high is not None:
        rule = f"{noun} in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        rule = f"{noun} {'>' if open_low else '>='} {low:g}"
    elif high is not None:
        rule = f"{noun} {'<' if open_high else '<='} {high:g}"
    else:
        rule = noun

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    convert.__name__ = rule  # argparse names the type in some messages
    return convert


INT = number(int)
POSITIVE_INT = number(int, 1)
NONNEGATIVE_INT = number(int, 0)
POSITIVE = number(float, 0, open_low=True)
NONNEGATIVE = number(float, 0)
PROBABILITY = number(float, 0, 1)
DROPOUT = number(float, 0, 1, open_high=True)
OPEN_FRACTION = number(float, 0, 1, open_low=True, open_high=True)


def OUTPUT_FILE(text: str) -> str:  # noqa: N802 (named like the other flag types)
    """An argparse ``type`` for a flag naming a file to write (``--out``, ``--write``, ...): refuses a folder —
    ``/``, ``.``, ``..``, a path ending in ``/`` or an existing folder — which no file can be renamed onto."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; name a file to write")
    if text.endswith(("/", os.sep)) or Path(text).name in ("", "..") or Path(text).is_dir():
        example = os.path.join(text, "NAME")
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file; name a file in it, such as {example}")
    return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line — ``error: <script>: argument --x: ...`` — with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")
