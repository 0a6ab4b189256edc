"""Inference with a clinical report: ``thyroid-monai infer`` and ``configs/inference.yaml``.

:func:`load_model` loads a run folder, checkpoint, TorchScript file or MLflow model URI;
:func:`run_inference` reads DICOM, NIfTI, PNG or JPEG files and writes, per image, the mask
(NIfTI, and DICOM SEG for DICOM inputs), an overlay PNG and ``report.json`` (level and
probabilities, descriptor points, measurements in mm, ACR recommendation, findings).
"""

from thyroid_monai.inference.descriptors import (
    DescriptorAssessment,
    DescriptorThresholds,
    descriptors_from_heads,
    estimate_descriptors,
)
from thyroid_monai.inference.inputs import (
    InputError,
    InputImage,
    NotAnImageError,
    discover_inputs,
    read_input,
)
from thyroid_monai.inference.measurements import (
    NoduleMeasurements,
    largest_component,
    measure_nodule,
)
from thyroid_monai.inference.model import (
    InferenceModel,
    ModelLoadError,
    Prediction,
    UntrustedModelError,
    checkpoint_model,
    inference_preprocessing,
    load_model,
)
from thyroid_monai.inference.pipeline import (
    InferenceSettings,
    InferenceSummary,
    build_report,
    deidentification_options,
    infer_image,
    predict_report,
    run_inference,
)
from thyroid_monai.inference.report import SCHEMA_VERSION, findings_text

__all__ = [
    "SCHEMA_VERSION",
    "DescriptorAssessment",
    "DescriptorThresholds",
    "InferenceModel",
    "InferenceSettings",
    "InferenceSummary",
    "InputError",
    "InputImage",
    "ModelLoadError",
    "NoduleMeasurements",
    "NotAnImageError",
    "Prediction",
    "UntrustedModelError",
    "build_report",
    "checkpoint_model",
    "deidentification_options",
    "descriptors_from_heads",
    "discover_inputs",
    "estimate_descriptors",
    "findings_text",
    "infer_image",
    "inference_preprocessing",
    "largest_component",
    "load_model",
    "measure_nodule",
    "predict_report",
    "read_input",
    "run_inference",
]
