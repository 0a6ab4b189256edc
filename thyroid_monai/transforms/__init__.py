"""MONAI transforms for thyroid ultrasound: array transforms with ``...d`` dictionary wrappers."""

from thyroid_monai.transforms.labels import TiradsToIndex, TiradsToIndexd
from thyroid_monai.transforms.readers import (
    RandReaderd,
    ReaderMode,
    SoftReaderLabelsd,
    reader_transform,
)
from thyroid_monai.transforms.targets import (
    DescriptorsToIndicesd,
    PixelSpacingd,
    RadiomicsTargetd,
    radiomics_feature_names,
)

__all__ = [
    "DescriptorsToIndicesd",
    "PixelSpacingd",
    "RadiomicsTargetd",
    "RandReaderd",
    "ReaderMode",
    "SoftReaderLabelsd",
    "TiradsToIndex",
    "TiradsToIndexd",
    "radiomics_feature_names",
    "reader_transform",
]
