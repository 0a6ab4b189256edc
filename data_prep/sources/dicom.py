"""Source ``dicom``: a tree of ultrasound DICOM exports, de-identified by default.

Reading the files (SOP classes, SEG masks, cines, de-identification, tissue crops):
:mod:`data_prep.dicom`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from data_prep.sources.base import ConvertOptions, Discovery, OptionError, Source, SourceOptions
from thyroid_monai.arguments import existing, frames, region

if TYPE_CHECKING:
    from thyroid_monai.io.deid import DeidentificationOptions

SALT_VARIABLE = "THYROID_MONAI_DEID_SALT"
"""Environment variable of the de-identification salt when ``--salt`` is not given."""


@dataclass(frozen=True)
class DicomOptions(SourceOptions):
    """Options of ``prep dicom``."""

    unrecorded: ClassVar[tuple[str, ...]] = ("salt",)

    masks: Path | None = None
    """Folder of PNG masks (DICOM SEG masks are found in the tree)."""
    labels: Path | None = None
    """Labels CSV keyed by ``file`` or ``sop_instance_uid``."""
    scheme: str = "acr"
    """TI-RADS scheme of the labels: ``acr`` or ``kwak``."""
    frames: str = "middle"
    """Cine frames to keep: ``all``, ``middle``, ``first`` or a frame number."""
    region: str = "largest"
    """``largest`` or the index of the 2D ultrasound region to keep."""
    no_deid: bool = False
    """Keep identities (not advised)."""
    retain_dates: Literal["none", "modified", "full"] = "none"
    """Retain Longitudinal Temporal Information option: ``none``, ``modified`` or ``full``."""
    salt: str | None = None
    """De-identification salt (a secret: never recorded)."""

    def deidentification(self) -> DeidentificationOptions | None:
        """The de-identification settings, ``None`` with ``no_deid``.

        Raises:
            OptionError: If de-identifying without a salt.
        """
        from thyroid_monai.io.deid import DeidentificationOptions

        if self.no_deid:
            return None
        if not self.salt:
            raise OptionError(
                f"de-identification needs a secret salt: --salt or ${SALT_VARIABLE} "
                "(the same salt gives the same pseudonyms and UIDs on every run)"
            )
        return DeidentificationOptions(salt=self.salt, retain_dates=self.retain_dates)


class DicomSource(Source):
    """Ultrasound DICOM exports (single images and cines), optional masks and labels."""

    name = "dicom"
    help = "a tree of ultrasound DICOM exports"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of this source on the command line."""
        parser.add_argument(
            "--masks", type=existing("folder"), help="folder of PNG masks (DICOM SEG: in the tree)"
        )
        parser.add_argument(
            "--labels", type=existing("file"), help="labels CSV keyed by file or sop_instance_uid"
        )
        parser.add_argument("--scheme", choices=["acr", "kwak"], default="acr", help="label scheme")
        parser.add_argument(
            "--frames", type=frames, default="middle",
            help="cine frames to keep: all, middle, first or a number",
        )  # fmt: skip
        parser.add_argument(
            "--region", type=region, default="largest", help="largest or the n-th 2D region"
        )
        parser.add_argument("--salt", help=f"de-identification salt (default: ${SALT_VARIABLE})")
        parser.add_argument("--no-deid", action="store_true", help="keep identities (not advised)")
        parser.add_argument(
            "--retain-dates", choices=["none", "modified", "full"], default="none",
            help="Retain Longitudinal Temporal Information option",
        )  # fmt: skip

    def options(self, args: argparse.Namespace) -> DicomOptions:
        """The typed options of the parsed command line (the salt from the environment)."""
        return DicomOptions(
            masks=args.masks, labels=args.labels, scheme=args.scheme, frames=args.frames,
            region=args.region, no_deid=args.no_deid, retain_dates=args.retain_dates,
            salt=args.salt or os.environ.get(SALT_VARIABLE),
        )  # fmt: skip

    def discover(self, convert: ConvertOptions, options: DicomOptions) -> Discovery:
        """The cases, the files refused and the datalist header."""
        from data_prep.dicom import discover_dicom
        from thyroid_monai.io.dicom import parse_frame_policy

        deid = options.deidentification()
        chosen: str | int = options.region if options.region == "largest" else int(options.region)
        cases, rejections = discover_dicom(
            convert.input, convert.out, masks_dir=options.masks, labels_csv=options.labels,
            frames=parse_frame_policy(options.frames), region=chosen,  # type: ignore[arg-type]
            scheme=options.scheme, deid=deid,
        )  # fmt: skip
        header: dict[str, object] = {
            "name": "dicom-ultrasound",
            "description": "Ultrasound DICOM exports converted by thyroid-monai prep dicom",
            "source": self.name,
            "tirads_scheme": options.scheme,
            "deidentified": deid is not None,
            "frames": options.frames,
            "region": options.region,
        }
        return Discovery(list(cases), rejections, header)
