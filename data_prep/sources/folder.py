"""Source ``folder``: the user's own images/, masks/ and a labels CSV.

Reading the cases (image files, the labels and spacing columns): :mod:`data_prep.images`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from data_prep.sources.base import ConvertOptions, Discovery, Source, SourceOptions
from thyroid_monai.arguments import existing


@dataclass(frozen=True)
class FolderOptions(SourceOptions):
    """Options of ``prep folder``."""

    images: str = "images"
    """Images subfolder of the input folder."""
    masks: str = "masks"
    """Masks subfolder (same file stems as the images)."""
    labels: Path | None = None
    """Labels CSV keyed by ``image``."""
    scheme: str = "acr"
    """TI-RADS scheme of the labels: ``acr`` or ``kwak``."""


class FolderSource(Source):
    """A folder of image files (PNG, JPEG, BMP, TIFF) with masks and labels."""

    name = "folder"
    help = "images/, masks/ and a labels CSV"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of this source on the command line."""
        parser.add_argument("--images", default="images", help="images subfolder of --in")
        parser.add_argument("--masks", default="masks", help="masks subfolder (same file stems)")
        parser.add_argument("--labels", type=existing("file"), help="labels CSV keyed by 'image'")
        parser.add_argument("--scheme", choices=["acr", "kwak"], default="acr", help="label scheme")

    def options(self, args: argparse.Namespace) -> FolderOptions:
        """The typed options of the parsed command line."""
        return FolderOptions(
            images=args.images, masks=args.masks, labels=args.labels, scheme=args.scheme
        )

    def discover(self, convert: ConvertOptions, options: FolderOptions) -> Discovery:
        """The cases, the files refused and the datalist header."""
        from data_prep.images import discover_folder

        cases, rejections = discover_folder(
            convert.input, images=options.images, masks=options.masks, labels_csv=options.labels,
            scheme=options.scheme,
        )  # fmt: skip
        header: dict[str, object] = {
            "name": convert.input.name,
            "description": "Image folder converted by thyroid-monai prep folder",
            "source": self.name,
            "tirads_scheme": options.scheme,
        }
        return Discovery(list(cases), rejections, header)
