"""Loading a trained model for inference, and running it on one image.

Three kinds of model are accepted by :func:`load_model`:

- a bundle **run folder** (``<run>/models/model.pt``) or a **checkpoint file**: a state dict (or a
  training checkpoint holding ``{"model": state_dict}``) loaded with
  ``torch.load(weights_only=True)``, so no code in the file runs. The network is rebuilt from the
  run's config: the ``eval/config_<time>.json`` that a tracked run saves (the newest one), or the
  config files given (``train.yaml`` plus the run's overrides). The radiomics head's size comes
  from the checkpoint itself (the config derives it from a datalist that inference may not have);
- a **TorchScript** file (as ``ckpt_export`` writes it): loaded with ``torch.jit.load``, which
  runs TorchScript code but unpickles no Python objects; its embedded config (``extra/*.json``)
  gives the input size and label grouping;
- an MLflow **model URI** (``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``): the
  registered pyfunc (:mod:`thyroid_monai.tracking.served_model`) rebuilds the network from its
  logged config and loads its weights weights-only, but it runs the package source logged with
  it, so it needs ``trust=True`` (``--trust-model``). Versions logged with ``mlflow.pytorch`` by
  earlier releases are pickled modules (same flag); their input size comes from the logged
  signature, the label grouping from the run's parameters.

A checkpoint that ``weights_only`` loading refuses (a pickled module) is likewise loaded only with
``trust=True``. Anything else raises :class:`UntrustedModelError`, naming the file or URI and the
flag.

Pre-processing is :func:`inference_preprocessing`, the image part of the bundle's loading steps
(:func:`~thyroid_monai.transforms.loading_transforms`: intensity 0-255 to 0-1 with clipping, area
resize to ``image_size``), applied to the image in MONAI's x-first layout. The nodule probability
is resized back to the input with bilinear interpolation before thresholding, so the mask follows
the input's pixel grid.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, ScaleIntensityRange

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.io.checkpoints import RUN_CONFIG
from thyroid_monai.tirads import LabelGrouping, Scheme, get_grouping
from thyroid_monai.transforms.geometry import ResizeToFit, undo_fit

MODEL_URI_SCHEMES = ("models:/", "runs:/")
TRUST_FLAG = "--trust-model"


class ModelLoadError(ValueError):
    """A model that cannot be loaded (the message names the file or URI and the problem)."""


class UntrustedModelError(ModelLoadError):
    """Loading the model would unpickle a file and trust was not given."""


def inference_preprocessing(image_size: Sequence[int]) -> Compose:
    """The bundle's deterministic pre-processing of an x-first ``(1, x, y)`` image.

    Mirrors the image part of :func:`~thyroid_monai.transforms.loading_transforms`:
    ``ScaleIntensityRange`` 0-255 to 0-1 with clipping, then an ``area`` resize by one factor to
    fit ``image_size`` and centred zero padding (the aspect ratio is kept).
    """
    return Compose(
        [
            ScaleIntensityRange(a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
            ResizeToFit(spatial_size=tuple(image_size), mode="area"),
        ]
    )


@dataclass
class Prediction:
    """The model's outputs for one image, in the input's ``(rows, columns)`` grid.

    Attributes:
        nodule_probability: Probability of nodule per pixel (``None`` for a level-only model).
        level_probabilities: One probability per class of the label grouping, or ``None``.
        descriptor_logits: ``{desc_<category>: logits}`` when the model has descriptor heads.
    """

    nodule_probability: np.ndarray | None
    level_probabilities: np.ndarray | None
    descriptor_logits: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class InferenceModel:
    """A network ready for inference with what is needed to read its outputs.

    Attributes:
        network: Returns a dict of outputs (``seg``, ``cls``, ``desc_*``) or the ``seg`` tensor.
        image_size: Network input size ``(x, y)``.
        grouping: Label grouping of the level head (``None`` when the model has none).
        kind: ``"checkpoint"``, ``"torchscript"`` or ``"mlflow"``.
        name: The file name or URI it came from (no folder, which may name a patient or user).
        device: Where it runs.
    """

    network: torch.nn.Module
    image_size: tuple[int, int]
    grouping: LabelGrouping | None
    kind: str
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.network.eval()
        self._preprocessing = inference_preprocessing(self.image_size)

    def describe(self) -> dict[str, object]:
        """JSON-ready description for reports."""
        return {
            "kind": self.kind,
            "name": self.name,
            "image_size": list(self.image_size),
            "level_from": getattr(self.network, "level_from", "direct"),
            "label_grouping": self.grouping.name if self.grouping else None,
            "classes": list(self.grouping.class_names) if self.grouping else None,
        }

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Prediction:
        """Runs the network on one ``(rows, columns)`` gray-level image (0-255 range)."""
        rows, columns = image.shape
        x_first = torch.as_tensor(np.ascontiguousarray(image.T), dtype=torch.float32)[None]
        prepared = self._preprocessing(x_first)
        # The network needs no metadata past pre-processing: a plain tensor of the same values.
        plain = prepared.as_tensor() if isinstance(prepared, MetaTensor) else prepared
        batch = torch.as_tensor(plain).contiguous()[None].to(self.device)
        outputs = self.network(batch)
        if isinstance(outputs, torch.Tensor):
            outputs = {keys.SEG: outputs}
        probability = None
        if keys.SEG in outputs:
            logits = outputs[keys.SEG].float()
            nodule = (
                torch.sigmoid(logits[:, :1])
                if logits.shape[1] == 1
                else torch.softmax(logits, dim=1)[:, 1:2]
            )
            resized = undo_fit(nodule, (columns, rows))  # the padding off, back to the input
            probability = resized[0, 0].cpu().numpy().T
        level = None
        if keys.CLS in outputs:
            # Softmax of logits, and of an ordinal head's log-probabilities, gives probabilities.
            level = torch.softmax(outputs[keys.CLS].float(), dim=1)[0].cpu().numpy()
        descriptors = {
            task: outputs[task][0].float().cpu().numpy()
            for task in descriptor_tasks.DESCRIPTOR_TASKS
            if task in outputs
        }
        return Prediction(probability, level, descriptors)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def _embedded_configs(path: Path) -> dict[str, Any]:
    """The JSON configs ``ckpt_export`` embeds in a TorchScript archive, merged in name order."""
    merged: dict[str, Any] = {}
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if "/extra/" in name and name.endswith(".json"):
                content = json.loads(archive.read(name).decode("utf-8") or "{}")
                if isinstance(content, dict):
                    merged.update(content)
    return merged


def _grouping_of(config: Mapping[str, Any], where: str, has_level: bool) -> LabelGrouping | None:
    if not has_level:
        return None
    name = config.get("label_grouping")
    if not isinstance(name, str):
        raise ModelLoadError(f"{where}: no label_grouping recorded for the level head")
    scheme: Scheme = config.get("tirads_scheme") or "acr"  # the bundle's default scheme
    return get_grouping(name, scheme)


def _image_size(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise ModelLoadError(f"{where}: no 2D image_size recorded (got {value!r})")
    return int(value[0]), int(value[1])


def _run_config_files(checkpoint: Path) -> list[Path]:
    """The config the run of a ``<run>/models/*.pt`` checkpoint was trained with.

    ``<run>/configs/train.json``, which every training writes; runs trained before it existed
    have only the newest ``<run>/eval/config_<time>.json`` of a tracked run.
    """
    run = checkpoint.parent.parent
    recorded = run / RUN_CONFIG
    if recorded.is_file():
        return [recorded]
    saved = sorted((run / "eval").glob("config_*.json"))
    return saved[-1:]


def _read_state(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file not found") from None
    except Exception as error:  # weights_only refuses globals; anything else is a damaged file
        # Objects beyond tensors and containers need their classes imported: that is the refusal.
        if "Unsupported global" not in str(error):
            raise ModelLoadError(f"{path}: not a readable checkpoint ({error})") from None
        if not trust:
            raise UntrustedModelError(
                f"{path}: the file holds pickled Python objects, not only weights; loading it "
                f"would run code from the file. Pass {TRUST_FLAG} if you trust its origin"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)


def _network_from_config(
    config_files: Sequence[Path], state: Mapping[str, torch.Tensor]
) -> tuple[torch.nn.Module, dict[str, Any]]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files])
    # The radiomics head's size is derived from the training datalist; the weights say it too.
    head = state.get("radiomics_head.weight")
    parser["radiomics_dim"] = int(head.shape[0]) if head is not None else 0
    network = parser.get_parsed_content("network_def", instantiate=True)
    values = {
        name: parser.get_parsed_content(name)
        for name in ("image_size", "label_grouping", "tirads_scheme")
        if name in parser
    }
    return network, values


def _state_dict(state: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(state, torch.nn.Module):
        raise ModelLoadError(
            f"{path}: a pickled module carries no input size or label grouping; export it with "
            "ckpt_export (TorchScript) or give the run's state dict with its config"
        )
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a training checkpoint (model, optimiser, ...)
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def checkpoint_model(
    network: torch.nn.Module,
    checkpoint: str | Path,
    *,
    image_size: Sequence[int],
    label_grouping: str | None,
    tirads_scheme: Scheme = "acr",
    device: str | torch.device = "cpu",
    trust: bool = False,
) -> InferenceModel:
    """Loads a state dict into a network built elsewhere (the bundle's ``network``).

    Args:
        network: The network the checkpoint was trained as.
        checkpoint: ``models/model.pt`` (or a training checkpoint with a ``model`` entry).
        image_size: Network input size ``(x, y)``.
        label_grouping: Label grouping of the level head (ignored when the network has none).
        tirads_scheme: Scheme of the grouping.
        device: Where it runs.
        trust: Allow unpickling (see :func:`load_model`).

    Raises:
        ModelLoadError: If the checkpoint is missing, damaged or does not match the network.
    """
    path = Path(checkpoint)
    state = _state_dict(_read_state(path, trust), path)
    try:
        network.load_state_dict(dict(state))
    except RuntimeError as error:
        raise ModelLoadError(f"{path}: does not match the network: {error}") from None
    config = {"label_grouping": label_grouping, "tirads_scheme": tirads_scheme}
    has_level = getattr(network, "classifier", None) is not None
    return InferenceModel(
        network=network.to(torch.device(device)),
        image_size=_image_size(list(image_size), str(path)),
        grouping=_grouping_of(config, str(path), has_level),
        kind="checkpoint",
        name=path.name,
        device=torch.device(device),
    )


def _load_checkpoint(
    path: Path, config_files: Sequence[Path] | None, trust: bool, device: torch.device
) -> InferenceModel:
    state = _state_dict(_read_state(path, trust), path)
    files = list(config_files) if config_files else _run_config_files(path)
    if not files:
        raise ModelLoadError(
            f"{path}: no run config found ({RUN_CONFIG} or eval/config_<time>.json in "
            f"{path.parent.parent}); give the config files the run was trained with"
        )
    try:
        network, values = _network_from_config(files, state)
        network.load_state_dict(dict(state))
    except (RuntimeError, KeyError, ValueError) as error:
        names = ", ".join(str(p) for p in files)
        raise ModelLoadError(f"{path}: does not match the network of {names}: {error}") from None
    where = f"{path} with {files[-1].name}"
    return InferenceModel(
        network=network.to(device),
        image_size=_image_size(values.get("image_size"), where),
        grouping=_grouping_of(values, where, getattr(network, "classifier", None) is not None),
        kind="checkpoint",
        name=path.name,
        device=device,
    )


def _load_torchscript(path: Path, device: torch.device) -> InferenceModel:
    try:
        network = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # a damaged archive raises several kinds of error
        raise ModelLoadError(f"{path}: not a loadable TorchScript file ({error})") from None
    config = _embedded_configs(path)
    where = f"{path} (embedded config)"
    has_level = bool(config.get("use_level", True))
    return InferenceModel(
        network=network,
        image_size=_image_size(config.get("image_size"), where),
        grouping=_grouping_of(config, where, has_level),
        kind="torchscript",
        name=path.name,
        device=device,
    )


def _load_mlflow(uri: str, trust: bool, device: torch.device) -> InferenceModel:
    if not trust:
        raise UntrustedModelError(
            f"{uri}: loading an MLflow model runs code from the model's artifacts (the logged "
            f"package source; a pickled module in models logged before the pyfunc). Pass "
            f"{TRUST_FLAG} if you trust the tracking server"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
        if "pytorch" in info.flavors:  # versions logged with mlflow.pytorch before the pyfunc
            return _load_mlflow_pytorch(uri, info, device)
        served = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except (MlflowException, OSError) as error:
        raise ModelLoadError(f"{uri}: cannot load the model ({error})") from None
    loaded = getattr(served, "model", None)
    if not isinstance(loaded, InferenceModel):
        raise ModelLoadError(f"{uri}: not a thyroid_monai model (no inference model inside)")
    return dataclasses.replace(
        loaded, network=loaded.network.to(device), kind="mlflow", name=uri, device=device
    )


def _load_mlflow_pytorch(uri: str, info: Any, device: torch.device) -> InferenceModel:
    """A version logged with ``mlflow.pytorch`` (a pickled module) by earlier releases."""
    import mlflow
    import mlflow.pytorch

    network = mlflow.pytorch.load_model(uri, map_location=device)
    params = mlflow.MlflowClient().get_run(info.run_id).data.params if info.run_id else {}
    if info.signature is None or info.signature.inputs is None:
        raise ModelLoadError(f"{uri}: the logged model has no input signature (image size)")
    shape = info.signature.inputs.inputs[0].shape  # (batch, channels, x, y)
    config = {
        "label_grouping": params.get("label_grouping"),
        "tirads_scheme": params.get("tirads_scheme"),
    }
    has_level = getattr(network, "classifier", None) is not None
    return InferenceModel(
        network=network.to(device),
        image_size=_image_size(list(shape[-2:]), uri),
        grouping=_grouping_of(config, f"{uri} (run parameters)", has_level),
        kind="mlflow",
        name=uri,
        device=device,
    )


def load_model(
    model: str | Path,
    *,
    trust: bool = False,
    config_files: Sequence[str | Path] | None = None,
    device: str | torch.device = "cpu",
) -> InferenceModel:
    """Loads a run folder, checkpoint, TorchScript file or MLflow model URI for inference.

    Args:
        model: A bundle run folder, a ``.pt`` state dict or checkpoint, a TorchScript file, or a
            ``models:/`` / ``runs:/`` URI.
        trust: Allow loading that unpickles (MLflow models, pickled checkpoints).
        config_files: The run's config files, when the run folder has no saved config.
        device: Where the network runs.

    Returns:
        The model.

    Raises:
        UntrustedModelError: If loading would unpickle and ``trust`` is false.
        ModelLoadError: For a missing, damaged or mismatched model (names it and the problem).
    """
    target = torch.device(device)
    if isinstance(model, str) and model.startswith(MODEL_URI_SCHEMES):
        return _load_mlflow(model, trust, target)
    path = Path(model)
    configs = [Path(p) for p in config_files] if config_files else None
    if path.is_dir():
        checkpoint = path / "models" / "model.pt"
        if not checkpoint.is_file():
            raise ModelLoadError(f"{path}: a run folder needs models/model.pt, which is missing")
        return _load_checkpoint(checkpoint, configs, trust, target)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model not found (a run folder, .pt or .ts file, or URI)")
    if _is_torchscript(path):
        return _load_torchscript(path, target)
    return _load_checkpoint(path, configs, trust, target)
