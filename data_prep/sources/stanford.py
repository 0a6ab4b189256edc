"""Source ``stanford-cine``: the Stanford AIMI thyroid ultrasound cine-clip dataset (HDF5).

Reading the clips (lazy frame reads, the metadata rows): :mod:`data_prep.stanford`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from data_prep.sources.base import ConvertOptions, Discovery, Source, SourceOptions
from thyroid_monai.arguments import at_least, frames


@dataclass(frozen=True)
class StanfordOptions(SourceOptions):
    """Options of ``prep stanford-cine``."""

    frames: str = "middle"
    """Frames to keep: ``all``, ``middle``, ``first`` or a frame number."""
    frame_stride: int = 1
    """Every n-th frame with ``frames="all"``."""


class StanfordSource(Source):
    """Stanford AIMI thyroid ultrasound cine clips."""

    name = "stanford-cine"
    help = "Stanford AIMI thyroid cine clips (HDF5)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of this source on the command line."""
        parser.add_argument(
            "--frames", type=frames, default="middle", help="all, middle, first or a frame"
        )
        parser.add_argument("--frame-stride", type=at_least(1), default=1, help="with --frames all")

    def options(self, args: argparse.Namespace) -> StanfordOptions:
        """The typed options of the parsed command line."""
        return StanfordOptions(frames=args.frames, frame_stride=args.frame_stride)

    def discover(self, convert: ConvertOptions, options: StanfordOptions) -> Discovery:
        """The cases, the files refused and the datalist header."""
        from data_prep.stanford import discover_stanford
        from thyroid_monai.io.dicom import parse_frame_policy

        cases, rejections = discover_stanford(
            convert.input, frames=parse_frame_policy(options.frames), stride=options.frame_stride
        )
        header: dict[str, object] = {
            "name": "stanford-thyroid-cine",
            "description": "Stanford AIMI thyroid ultrasound cine-clip dataset",
            "source": self.name,
            "tirads_scheme": "acr",
            "frames": options.frames,
            "frame_stride": options.frame_stride,
        }
        return Discovery(list(cases), rejections, header)
