"""argparse value types shared by every command's CLI (``type=`` of ``add_argument``).

A foundation module like :mod:`geossl.choices`: it imports nothing of geossl, so any package's CLI can
use it without importing the ``geossl`` command itself (:mod:`geossl.cli`), which sits above them all.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """``type=`` for counts and sizes that must be >= 1 (``--k``, ``--max-iter``, ``--tile-size``, ...).

    Checked while the arguments are parsed, so ``--k 0`` is refused in a second, naming the option, rather
    than after an hour of feature extraction; and 0 can never slip through a ``value or default`` as "the
    default" (``--tile-size 0`` used to mean the model's tile size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    """``type=`` for shares that must lie in [0, 1] (``--max-bad-fraction``): a percentage typed as 5 or a
    typo is refused while the arguments are parsed, naming the option, not after the sampling."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value
