"""The dataset sources of ``thyroid-monai prep``: one module per source, a registry, conversion.

Each source module (:mod:`~data_prep.sources.dicom`, :mod:`~data_prep.sources.ddti`,
:mod:`~data_prep.sources.tn3k`, :mod:`~data_prep.sources.stanford`,
:mod:`~data_prep.sources.folder`) owns what is known about its dataset: its citation, its
command-line options as a typed dataclass, the datalist header of its conversions, and the
discovery of its cases. Reading a source's files is the job of its reader module
(:mod:`data_prep.dicom`, :mod:`data_prep.ddti`, :mod:`data_prep.images`,
:mod:`data_prep.stanford`), imported only when converting.

Converting from Python::

    from data_prep.sources import ConvertOptions, SOURCES, convert_source
    from data_prep.sources.ddti import DdtiOptions

    convert_source(SOURCES["ddti"], ConvertOptions(input=Path("ddti"), out=Path("data")),
                   DdtiOptions())
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.sources.base import (
    ConvertOptions,
    Discovery,
    OptionError,
    Source,
    SourceOptions,
    add_convert_arguments,
)
from data_prep.sources.ddti import DdtiSource
from data_prep.sources.dicom import DicomSource
from data_prep.sources.folder import FolderSource
from data_prep.sources.stanford import StanfordSource
from data_prep.sources.tn3k import Tn3kSource

if TYPE_CHECKING:
    from data_prep.convert import ConversionResult

__all__ = [
    "SOURCES",
    "ConvertOptions",
    "Discovery",
    "OptionError",
    "Source",
    "SourceOptions",
    "add_convert_arguments",
    "convert_source",
]

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (DicomSource(), DdtiSource(), Tn3kSource(), StanfordSource(), FolderSource())
}
"""The sources by ``prep`` subcommand, in the order ``thyroid-monai prep --help`` lists them."""


def _manifest_options(
    source: Source, convert: ConvertOptions, options: SourceOptions, *, hide_paths: bool
) -> dict[str, Any]:
    """The options the manifest records; paths as text, or none of them for hidden paths."""
    recorded = {"command": "prep", "source": source.name, **convert.record(), **options.record()}
    return {
        key: ((None if hide_paths else str(value)) if isinstance(value, Path) else value)
        for key, value in recorded.items()
    }


def convert_source(
    source: Source, convert: ConvertOptions, options: SourceOptions
) -> ConversionResult:
    """Finds the cases of ``source`` and converts them (:func:`data_prep.convert.convert_dataset`).

    Raises:
        OptionError: For options that cannot work together (before anything is written).
        FileNotFoundError: If the source's layout is missing.
        ValueError: For an unusable source or split (named in the message).
    """
    from data_prep.convert import SplitOptions, convert_dataset

    cases, rejections, header = source.discover(convert, options)
    # Paths may name patients: a de-identified dataset records none of them in its manifest.
    recorded = _manifest_options(
        source, convert, options, hide_paths=bool(header.get("deidentified"))
    )
    split = SplitOptions(
        folds=convert.folds, test_fraction=convert.test_fraction, seed=convert.seed,
        fixed_test=convert.fixed_test() | frozenset(header.pop("fixed_test", ())),
        keep_folds=bool(header.pop("keep_folds", False)),
    )  # fmt: skip
    return convert_dataset(
        cases, rejections, convert.out, header=header, split=split, options=recorded,
        workers=convert.workers, progress=convert.progress,
    )  # fmt: skip
