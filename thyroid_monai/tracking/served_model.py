"""The registered model as MLflow serves it: an image array in; mask, level and report out.

A registered version is a ``python_function`` model logged *from code*
(:data:`MODEL_CODE`, a three-line file that names :class:`UltrasoundModel`), with two artifacts:

* ``weights``: the best checkpoint's state dict, loaded with ``torch.load(weights_only=True)``;
* ``config``: the run's merged bundle config, from which the network is rebuilt exactly as
  ``thyroid-monai infer`` rebuilds a run folder's (:func:`~thyroid_monai.inference.load_model`).

No Python object is unpickled when the model loads. What loading trusts is the code that comes
with the model: this package's source (``code/thyroid_monai``), the model file, and the config's
``$`` expressions and ``_target_`` classes, which MONAI evaluates to build the network (README,
"Serving the champion"). Predictions go through the inference pipeline's
:func:`~thyroid_monai.inference.pipeline.predict_report`, so a served answer is the report
``thyroid-monai infer`` writes for the same pixels.

Request (``mlflow models serve``, ``POST /invocations``)::

    {"inputs": [[[...]]],                                     # (images, rows, columns), 0-255
     "params": {"spacing_mm": [0.1, 0.1], "threshold": 0.5}}   # both optional

Answer: ``{"predictions": {"mask": ..., "level_probabilities": ..., "level": ..., "report": ...}}``
with, per image, the ``(rows, columns)`` 0/1 mask, the probabilities of the label grouping's
classes, the class name and the report (JSON text, the schema of ``report.json``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

MODEL_CODE = Path(__file__).with_name("served_model_code.py")
"""The file logged as the model's code (MLflow's models-from-code: no pickled Python object)."""
WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "config"
SPACING_PARAM = "spacing_mm"
THRESHOLD_PARAM = "threshold"
DEFAULT_THRESHOLD = 0.5


def serving_signature() -> ModelSignature:
    """The served model's signature: a batch of gray images in; mask, level and report out.

    Images of any size are accepted (the pipeline resizes them to the network's input); one
    request holds images of one size. ``spacing_mm`` (``[x_mm, y_mm]``, empty when unknown) and
    ``threshold`` are optional request parameters.
    """
    # One unnamed tensor: the model receives the array itself (a named one arrives as a dict).
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))])
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "mask"),
            TensorSpec(np.dtype(np.float32), (-1, -1), "level_probabilities"),
            TensorSpec(np.dtype(str), (-1,), "level"),
            TensorSpec(np.dtype(str), (-1,), "report"),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec(SPACING_PARAM, "double", [], (-1,)),
            ParamSpec(THRESHOLD_PARAM, "double", DEFAULT_THRESHOLD),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _images(model_input: np.ndarray) -> np.ndarray:
    """The ``(images, rows, columns)`` batch of a request (a single image gets a batch axis)."""
    images = np.asarray(model_input, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or 0 in images.shape:
        raise ValueError(
            f"the input must be a batch of 2D gray images (images, rows, columns); got shape "
            f"{images.shape}"
        )
    return images


def _spacing(params: dict[str, Any] | None) -> tuple[float, float] | None:
    values = list((params or {}).get(SPACING_PARAM) or [])
    if not values:
        return None
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"'{SPACING_PARAM}' must be two positive numbers [x_mm, y_mm]")
    return float(values[0]), float(values[1])


class UltrasoundModel(PythonModel):
    """The pyfunc of a registered version: the inference pipeline behind MLflow's interface."""

    def __init__(self) -> None:
        self.model: Any = None  # the InferenceModel, built in load_context

    def load_context(self, context: PythonModelContext) -> None:
        """Builds the network from the logged config and loads the weights (weights-only)."""
        from thyroid_monai.inference import load_model

        weights = context.artifacts[WEIGHTS_ARTIFACT]
        loaded = load_model(weights, config_files=[context.artifacts[CONFIG_ARTIFACT]])
        self.model = dataclasses.replace(loaded, kind="mlflow", name="pyfunc")

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,  # MLflow validates against the signature, not this hint
        params: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Mask, level probabilities, level and report of every image of the request."""
        from thyroid_monai.inference.inputs import InputImage
        from thyroid_monai.inference.pipeline import InferenceSettings, predict_report

        spacing = _spacing(params)
        threshold = float((params or {}).get(THRESHOLD_PARAM, DEFAULT_THRESHOLD))
        settings = InferenceSettings(threshold=threshold, write_segmentation=False)
        masks, probabilities, levels, reports = [], [], [], []
        for index, pixels in enumerate(_images(model_input)):
            image = InputImage(
                path=Path("request"), kind="array", image=pixels, spacing_mm=spacing,
                spacing_source="request" if spacing else None,
            )  # fmt: skip
            report, mask, prediction = predict_report(
                self.model, image, name=f"image-{index}", relative_input=None,
                deidentified=False, settings=settings,
            )  # fmt: skip
            masks.append(mask.astype(np.uint8))
            level = prediction.level_probabilities
            probabilities.append(np.zeros(0) if level is None else level)
            levels.append(report["tirads"]["class"] or "")
            reports.append(json.dumps(report))
        return {
            "mask": np.stack(masks),
            "level_probabilities": np.stack(probabilities).astype(np.float32),
            "level": np.asarray(levels, dtype=str),
            "report": np.asarray(reports, dtype=str),
        }
