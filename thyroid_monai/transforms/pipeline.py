"""The steps of the data pipelines: loading (shared by training and validation) and augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)

from thyroid_monai import keys
from thyroid_monai.transforms.geometry import ResizeToFitd
from thyroid_monai.transforms.labels import TiradsToIndexd
from thyroid_monai.transforms.readers import ReaderMode, reader_transform
from thyroid_monai.transforms.select import SelectTaskItemsd
from thyroid_monai.transforms.targets import (
    DescriptorsToIndicesd,
    MissingTargetsd,
    PixelSpacingd,
    RadiomicsTargetd,
)

if TYPE_CHECKING:
    from thyroid_monai.tasks import TaskSet

MASK_KEYS = (keys.LABEL, keys.LABEL_READERS, keys.LABEL_TRUE)
LEVEL_KEYS = (keys.TIRADS, keys.TIRADS_READERS, keys.TIRADS_TRUE)


def loading_transforms(tasks: TaskSet, image_size: Sequence[int]) -> list[MapTransform]:
    """Files to tensors and level names to classes; absent keys are skipped.

    ``thyroid_monai.inference.inference_preprocessing`` applies the image part of these steps to
    new images (a test holds the two equal).

    Args:
        tasks: The learned tasks (label grouping, radiomics length, which targets must exist).
        image_size: Network input ``(x, y)``: one scale factor and centred zero padding, since a
            stretched frame would change the nodule's taller-than-wide shape (an ACR feature).

    Returns:
        Load, channel first (a list of reader masks loads as a readers-by-pixels stack), intensity
        0-255 to 0-1, fit to ``image_size``, pixel spacing, level classes, descriptor classes,
        the radiomics vector (when learned), placeholders for a missing mask or level (an item
        with neither is an error naming it), and float32 image and mask (unknown mask: NaN).
    """
    images = (keys.IMAGE, *MASK_KEYS)
    return [
        LoadImaged(keys=images, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(
            keys=(keys.IMAGE, keys.LABEL, keys.LABEL_TRUE),
            channel_dim="no_channel",
            allow_missing_keys=True,
        ),
        EnsureChannelFirstd(keys=keys.LABEL_READERS, allow_missing_keys=True),
        ScaleIntensityRanged(keys=keys.IMAGE, a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
        ResizeToFitd(
            keys=images,
            spatial_size=image_size,
            mode=("area", "nearest", "nearest", "nearest"),
            allow_missing_keys=True,
        ),
        PixelSpacingd(),
        TiradsToIndexd(
            keys=LEVEL_KEYS,
            grouping=tasks.label_grouping,
            scheme=tasks.tirads_scheme,
            allow_missing_keys=True,
        ),
        DescriptorsToIndicesd(),
        *([RadiomicsTargetd(num_features=tasks.radiomics_dim)] if tasks.radiomics else []),
        MissingTargetsd(mask=tasks.mask, level=tasks.level),
        EnsureTyped(keys=(keys.IMAGE, keys.LABEL), dtype=torch.float32),
    ]


def training_augmentation(
    tasks: TaskSet,
    reader_mode: ReaderMode = "consensus",
    flip_prob: float = 0.5,
    affine_prob: float = 0.5,
    rotate_range: float = 0.1745,
    scale_range: float = 0.1,
    intensity_factor: float = 0.15,
    gamma: tuple[float, float] = (0.8, 1.25),
) -> list[Transform]:
    """The random steps of training: the reader step, then augmentation that keeps orientation.

    Taller-than-wide is an ACR shape feature and depth matters for echogenicity, so the image is
    flipped laterally only, never vertically, and never rotated by 90 degrees.

    Args:
        tasks: The learned tasks (the reader step's level classes and descriptor targets).
        reader_mode: ``consensus``, ``sample`` (one reader per item per epoch; the drawn reader's
            mask is then augmented) or ``soft`` (the readers' average).
        flip_prob: Probability of a lateral flip.
        affine_prob: Probability of a small rotation and scaling.
        rotate_range: Largest rotation, radians (10 degrees).
        scale_range: Largest relative scaling.
        intensity_factor: Largest relative intensity scaling (probability 0.5).
        gamma: Contrast gamma range (probability 0.3).
    """
    spatial = (keys.IMAGE, keys.LABEL)
    return [
        reader_transform(reader_mode, tasks),
        RandFlipd(keys=spatial, prob=flip_prob, spatial_axis=0),
        RandAffined(
            keys=spatial,
            prob=affine_prob,
            rotate_range=(rotate_range,),
            scale_range=(scale_range, scale_range),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys=keys.IMAGE, factors=intensity_factor, prob=0.5),
        RandAdjustContrastd(keys=keys.IMAGE, gamma=gamma, prob=0.3),
    ]


def training_preprocessing(
    tasks: TaskSet,
    image_size: Sequence[int],
    reader_mode: ReaderMode = "consensus",
    **augmentation: Any,
) -> Compose:
    """Training's pipeline: the fields the tasks use, loading, then augmentation.

    :func:`loading_transforms`, then :func:`training_augmentation` (``augmentation`` are its
    options). A ``CacheDataset`` caches every step before the first random one.
    """
    return Compose(
        [
            SelectTaskItemsd(tasks, reader_mode),
            *loading_transforms(tasks, image_size),
            *training_augmentation(tasks, reader_mode, **augmentation),
        ]
    )


def evaluation_preprocessing(tasks: TaskSet, image_size: Sequence[int]) -> Compose:
    """Validation's and evaluation's pipeline: consensus targets, references, then loading.

    Never a sampled reader; the references are those of the side-by-side scores (the phantom's
    truth, the spacing); then :func:`loading_transforms`.
    """
    return Compose(
        [SelectTaskItemsd(tasks, references=True), *loading_transforms(tasks, image_size)]
    )
