"""Names of the fields of one sample dictionary, shared by data preparation, training and inference.

Every sample that flows through the pipeline is one ``dict`` keyed by these names. A datalist JSON
written by ``thyroid-monai synth`` or ``thyroid-monai prep`` holds one such dictionary per image;
MONAI transforms then load the files and turn the level names into class indices.

Spatial convention: images follow MONAI's 2D convention of x (lateral, across the probe) first and
y (depth, along the beam) second, so a loaded array has shape ``(channels, width, height)``. The
``spacing`` field is ``[x_mm, y_mm]`` in the same order.
"""

from typing import Final

IMAGE: Final = "image"
"""Path to (or array of) the B-mode image, one channel."""

LABEL: Final = "label"
"""Consensus nodule mask: the mask a model is trained on."""

LABEL_READERS: Final = "label_readers"
"""One mask per reader (optional): a list of paths, stacked as channels once loaded."""

LABEL_TRUE: Final = "label_true"
"""Ground-truth mask known only for synthetic data (the phantom's nodule)."""

TIRADS: Final = "tirads"
"""Level used for training: a level name in the datalist (``"TR4"``), a class index once mapped."""

TIRADS_READERS: Final = "tirads_readers"
"""One level name per reader (optional)."""

TIRADS_TRUE: Final = "tirads_true"
"""Ground-truth level known only for synthetic data."""

TIRADS_SCHEME: Final = "tirads_scheme"
"""Name of the scheme the level names belong to: ``"acr"`` or ``"kwak"``."""

DESCRIPTORS: Final = "descriptors"
"""ACR descriptor dictionary (composition, echogenicity, shape, margin, echogenic foci)."""

TIRADS_POINTS: Final = "tirads_points"
"""ACR points per category and their total (known for synthetic data)."""

DESCRIPTORS_READERS: Final = "descriptors_readers"
"""One ACR descriptor dictionary per reader (optional)."""

RADIOMICS: Final = "radiomics"
"""Standardised radiomics target vector (optional)."""

PATHOLOGY: Final = "pathology"
"""Histology or cytology outcome when a dataset gives it: ``"benign"`` or ``"malignant"``."""

FRAME: Final = "frame"
"""1-based frame number of an image taken from a multi-frame DICOM or a cine clip."""

SPACING: Final = "spacing"
"""Pixel spacing in millimetres, ``[x_mm, y_mm]``; absent (or ``None``) when unknown."""

NODULE_SIZE: Final = "nodule_size_mm"
"""Known nodule extent for synthetic data: ``{"transverse": mm, "ap": mm}``."""

PATIENT: Final = "patient"
"""Patient identifier (pseudonymous); splits never put one patient in two folds."""

CASE_ID: Final = "case_id"
"""Identifier of the image, unique within a dataset."""

SOURCE: Final = "source"
"""Where the sample came from: ``"phantom"``, ``"ddti"``, ``"dicom"``, ..."""

FOLD: Final = "fold"
"""Cross-validation fold of a training item (patient-level)."""

# Keys the trainer and evaluator add to ``engine.state.output``.
PRED_SEG: Final = "pred_seg"
PRED_CLS: Final = "pred_cls"
LABEL_CLS: Final = "label_cls"
LABEL_CLS_TRUE: Final = "label_cls_true"
"""True level index (synthetic data), reported beside the readers' ``label_cls``."""

# Output keys of the multitask network (also the task names of the losses).
SEG: Final = "seg"
"""Segmentation logits, ``(batch, 2, x, y)``."""
CLS: Final = "cls"
"""TI-RADS logits, ``(batch, classes)`` (class log-probabilities for an ordinal head)."""
RAD: Final = "rad"
"""Predicted radiomics vector, ``(batch, features)``."""
LATENT: Final = "latent"
"""Shared latent: the deepest encoder feature map, ``(batch, channels, h, w)``."""

# Further outputs of the multitask network (not tasks of their own).
CLS_ORDINAL: Final = "cls_ordinal"
"""Cumulative logits ``logit P(level > k)``, ``(batch, classes - 1)``, of an ordinal level head."""
CLS_DIRECT: Final = "cls_direct"
"""Level log-probabilities of the direct level head, ``(batch, classes)`` (``level_from: both``)."""
CLS_ACR: Final = "cls_acr"
"""Level log-probabilities of the ACR route (descriptor heads -> points -> level),
``(batch, classes)`` (``level_from: acr_points`` or ``both``)."""
ENCODER_MAPS: Final = "encoder_maps"
"""Every encoder feature map, shallow to deep (a tuple; only when the network is asked for it)."""
