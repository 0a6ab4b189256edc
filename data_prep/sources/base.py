"""What every dataset source has: the conversion options they share and the source interface."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from thyroid_monai.arguments import at_least, existing, fraction

if TYPE_CHECKING:  # the readers import numpy, Pillow and pydicom: only when converting
    from data_prep.convert import Rejection, SourceCase


class OptionError(ValueError):
    """Options that cannot work together (a user error, reported before anything is written)."""


@dataclass(frozen=True)
class ConvertOptions:
    """The options every conversion takes: where from and to, folds, held-out set, processes."""

    input: Path
    out: Path
    folds: int = 5
    test_fraction: float = 0.2
    test_list: Path | None = None
    """File of case IDs to hold out (one per line) instead of a random share."""
    seed: int = 0
    workers: int = 1
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConvertOptions:
        """The options of :func:`add_convert_arguments` as parsed."""
        return cls(
            input=args.input, out=args.out, folds=args.folds, test_fraction=args.test_fraction,
            test_list=args.test_list, seed=args.seed, workers=args.workers,
            progress=not args.no_progress,
        )  # fmt: skip

    def fixed_test(self) -> frozenset[str]:
        """The case IDs of ``test_list`` (none without one)."""
        if self.test_list is None:
            return frozenset()
        lines = self.test_list.read_text(encoding="utf-8").splitlines()
        return frozenset(line.strip() for line in lines if line.strip())

    def record(self) -> dict[str, Any]:
        """The options as the manifest records them (``progress`` is not one)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "progress"}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of :class:`ConvertOptions`."""
    parser.add_argument(
        "--in", dest="input", type=existing("path"), required=True, help="source folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--folds", type=at_least(2), default=5, help="patient-level folds")
    parser.add_argument("--test-fraction", type=fraction, default=0.2, help="held-out patients")
    parser.add_argument(
        "--test-list", type=existing("file"),
        help="file of case IDs to hold out (one per line) instead",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=at_least(1), default=1, help="conversion processes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


class Discovery(NamedTuple):
    """What a source found: the cases, the files it refused, and the datalist header."""

    cases: list[SourceCase]
    rejections: list[Rejection]
    header: dict[str, Any]
    """Dataset fields of the datalist; ``fixed_test`` and ``keep_folds`` (popped by the
    conversion) name a dataset's own held-out cases and folds."""


@dataclass(frozen=True)
class SourceOptions:
    """The options of one source (a subclass per source); every field is recorded."""

    unrecorded: ClassVar[tuple[str, ...]] = ()
    """Fields left out of the manifest (secrets)."""

    def record(self) -> dict[str, Any]:
        """The options as the manifest records them."""
        kept = [f.name for f in fields(self) if f.name not in self.unrecorded]
        return {name: getattr(self, name) for name in kept}


class Source:
    """A dataset source: its name on the command line, what it is, its options and discovery.

    Subclasses set the class attributes and implement the three methods. The reading of the
    source's files (its :class:`~data_prep.convert.SourceCase`) lives in the reader module the
    subclass names, imported only when converting so that ``--help`` stays fast.
    """

    name: ClassVar[str]
    """The ``prep`` subcommand."""
    help: ClassVar[str]
    """One line for ``thyroid-monai prep --help``."""
    citation: ClassVar[str | None] = None
    """The publication to cite when using the dataset (``None`` for the user's own data)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds the source's own options (after the shared ones)."""
        raise NotImplementedError

    def options(self, args: argparse.Namespace) -> SourceOptions:
        """The source's typed options from the parsed command line.

        Raises:
            OptionError: For options that cannot work together.
        """
        raise NotImplementedError

    def discover(self, convert: ConvertOptions, options: Any) -> Discovery:
        """Finds the cases under ``convert.input``.

        Raises:
            OptionError: For options that cannot work together.
            FileNotFoundError: If the source's layout is missing.
            ValueError: For an unusable source (named in the message).
        """
        raise NotImplementedError
