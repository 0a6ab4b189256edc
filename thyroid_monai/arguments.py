"""Value types of the command-line options: each checks one value and names what is wrong.

An ``argparse`` ``type=`` callable raising :class:`argparse.ArgumentTypeError` turns a bad value
into a one-line usage error (exit status 2) before anything is written. The command
(:mod:`thyroid_monai.cli`) and the dataset sources (:mod:`data_prep.sources`) share them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _between_0_and_1(*, zero_allowed: bool) -> Callable[[str], float]:
    """A number in [0, 1) (``zero_allowed``) or in (0, 1)."""
    interval = "[0, 1)" if zero_allowed else "(0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0.0 <= value < 1.0 if zero_allowed else 0.0 < value < 1.0):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


fraction = _between_0_and_1(zero_allowed=True)
"""A number in [0, 1)."""
probability = _between_0_and_1(zero_allowed=False)
"""A number in (0, 1)."""


def existing(kind: str) -> Callable[[str], Path]:
    """A path that must exist: ``"folder"``, ``"file"`` or ``"path"`` (either)."""

    def parse(text: str) -> Path:
        path = Path(text)
        exists = {"folder": path.is_dir, "file": path.is_file, "path": path.exists}[kind]()
        if not exists:
            raise argparse.ArgumentTypeError(f"{kind} not found: {path}")
        return path

    parse.__name__ = f"existing {kind}"
    return parse


def frames(text: str) -> str:
    """A frame policy (checked here, parsed by the command)."""
    from thyroid_monai.io.dicom import parse_frame_policy

    try:
        policy = parse_frame_policy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if isinstance(policy, int) and policy < 1:
        raise argparse.ArgumentTypeError(f"frame numbers start at 1, got {policy}")
    return text


def region(text: str) -> str:
    """``largest`` or a region index >= 0."""
    if text != "largest" and not (text.isdigit()):
        raise argparse.ArgumentTypeError(f"use 'largest' or a region index (0, 1...), got {text!r}")
    return text


def class_mix(text: str) -> str | dict[str, float]:
    """``uniform``/``clinical`` or ``TR1=1,TR2=1,...``."""
    if "=" not in text:
        if text not in ("uniform", "clinical"):
            raise argparse.ArgumentTypeError(
                f"use uniform, clinical or weights like TR1=1,TR2=2, got {text!r}"
            )
        return text
    mix = {}
    for part in text.split(","):
        level, _, weight = part.partition("=")
        try:
            mix[level.strip().upper()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {level!r} is not a number") from None
    return mix
