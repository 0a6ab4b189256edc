"""Source ``ddti``: the Digital Database Thyroid Image (xml/ and images/, Kwak TI-RADS labels).

Reading the cases (polygons in the XML, truncated contours, several regions): :mod:`data_prep.ddti`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from data_prep.sources.base import ConvertOptions, Discovery, Source, SourceOptions


@dataclass(frozen=True)
class DdtiOptions(SourceOptions):
    """Options of ``prep ddti``."""

    keep_partial: bool = False
    """Also rasterise contours cut by truncation."""


class DdtiSource(Source):
    """DDTI (Pedraza et al., SPIE 9287, 2015)."""

    name = "ddti"
    help = "DDTI: xml/ and images/ (Kwak TI-RADS labels)"
    citation = "Pedraza et al., SPIE 9287, 2015"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of this source on the command line."""
        parser.add_argument(
            "--keep-partial", action="store_true", help="also rasterise contours cut by truncation"
        )

    def options(self, args: argparse.Namespace) -> DdtiOptions:
        """The typed options of the parsed command line."""
        return DdtiOptions(keep_partial=args.keep_partial)

    def discover(self, convert: ConvertOptions, options: DdtiOptions) -> Discovery:
        """The cases, the files refused and the datalist header."""
        from data_prep.ddti import discover_ddti

        cases, rejections = discover_ddti(convert.input, keep_partial=options.keep_partial)
        header: dict[str, object] = {
            "name": "ddti",
            "description": f"DDTI thyroid ultrasound database ({self.citation})",
            "source": self.name,
            "version": "original XML + JPG layout",
            "tirads_scheme": "kwak",
            "burned_in_text": "present in the frames, not removed (no region information)",
        }
        return Discovery(list(cases), rejections, header)
