"""Source ``tn3k``: TN3K (trainval/test image and mask folders, the dataset's fold files).

Reading the cases (image files, pathology CSVs, the official folds): :mod:`data_prep.images`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from data_prep.sources.base import ConvertOptions, Discovery, Source, SourceOptions


@dataclass(frozen=True)
class Tn3kOptions(SourceOptions):
    """Options of ``prep tn3k``."""

    folds_from: str = "computed"
    """``computed`` patient/duplicate-safe folds, or the ``dataset``'s fold JSON files."""


class Tn3kSource(Source):
    """TN3K (Gong et al., ISBI 2021): no TI-RADS levels; the official test split held out."""

    name = "tn3k"
    help = "TN3K: trainval/test image and mask folders"
    citation = "Gong et al., ISBI 2021"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of this source on the command line."""
        parser.add_argument(
            "--folds-from", choices=["computed", "dataset"], default="computed",
            help="computed patient/duplicate-safe folds, or the dataset's fold JSON files",
        )  # fmt: skip

    def options(self, args: argparse.Namespace) -> Tn3kOptions:
        """The typed options of the parsed command line."""
        return Tn3kOptions(folds_from=args.folds_from)

    def discover(self, convert: ConvertOptions, options: Tn3kOptions) -> Discovery:
        """The cases, the files refused and the datalist header."""
        from data_prep.images import discover_tn3k

        cases, rejections, extras = discover_tn3k(convert.input, folds_from=options.folds_from)
        header: dict[str, object] = {
            "name": "tn3k",
            "description": f"TN3K thyroid nodule ultrasound ({self.citation})",
            "source": self.name,
            "tirads_scheme": "acr",
            "note": "no TI-RADS levels (tirads is null); pathology from label4*.csv when present",
            **extras,
        }
        return Discovery(list(cases), rejections, header)
