"""MONAI transforms for thyroid ultrasound: array transforms with ``...d`` dictionary wrappers."""

from thyroid_monai.transforms.geometry import (
    FitGeometry,
    ResizeToFit,
    ResizeToFitd,
    fit_geometry,
    undo_fit,
)
from thyroid_monai.transforms.labels import TiradsToIndex, TiradsToIndexd
from thyroid_monai.transforms.pipeline import (
    evaluation_preprocessing,
    loading_transforms,
    training_augmentation,
    training_preprocessing,
)
from thyroid_monai.transforms.readers import (
    RandReaderd,
    ReaderMode,
    SoftReaderLabelsd,
    reader_transform,
)
from thyroid_monai.transforms.select import SelectTaskItemsd
from thyroid_monai.transforms.targets import (
    DescriptorsToIndicesd,
    MissingTargetsd,
    PixelSpacingd,
    RadiomicsTargetd,
    radiomics_feature_count,
    radiomics_feature_names,
)

__all__ = [
    "DescriptorsToIndicesd",
    "FitGeometry",
    "MissingTargetsd",
    "PixelSpacingd",
    "RadiomicsTargetd",
    "RandReaderd",
    "ReaderMode",
    "ResizeToFit",
    "ResizeToFitd",
    "SelectTaskItemsd",
    "SoftReaderLabelsd",
    "TiradsToIndex",
    "TiradsToIndexd",
    "evaluation_preprocessing",
    "fit_geometry",
    "loading_transforms",
    "radiomics_feature_count",
    "radiomics_feature_names",
    "reader_transform",
    "training_augmentation",
    "training_preprocessing",
    "undo_fit",
]
