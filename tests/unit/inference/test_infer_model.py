"""Loading models for inference: weights-only by default, TorchScript, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import save_net_with_metadata

from thyroid_monai.inference import (
    ModelLoadError,
    UntrustedModelError,
    checkpoint_model,
    inference_preprocessing,
    load_model,
)
from thyroid_monai.networks import MultitaskUNet


def small_network() -> MultitaskUNet:
    return MultitaskUNet(num_classes=5, seg_classes=2, embedding_dim=16).eval()


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(50, 70)).astype(np.float32)


def test_a_pickled_module_is_refused_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UntrustedModelError, match=r"pickled\.pt.*--trust-model"):
        load_model(path)
    # Trusted, it loads, but a bare module says nothing about its input size or labels.
    with pytest.raises(ModelLoadError, match="carries no input size"):
        load_model(path, trust=True)


def test_an_mlflow_uri_needs_trust() -> None:
    with pytest.raises(UntrustedModelError, match=r"models:/thyroid@champion.*--trust-model"):
        load_model("models:/thyroid@champion")


def test_missing_or_incomplete_models_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"absent\.pt: model not found"):
        load_model(tmp_path / "absent.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelLoadError, match=r"needs models/model\.pt"):
        load_model(tmp_path / "run")
    (tmp_path / "run" / "models").mkdir()
    torch.save(small_network().state_dict(), tmp_path / "run" / "models" / "model.pt")
    with pytest.raises(ModelLoadError, match="no run config found"):
        load_model(tmp_path / "run")
    (tmp_path / "damaged.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelLoadError, match=r"damaged\.pt: not a readable checkpoint"):
        load_model(tmp_path / "damaged.pt")


def test_checkpoint_model_reproduces_the_network(tmp_path: Path) -> None:
    network = small_network()
    torch.save({"model": network.state_dict()}, tmp_path / "checkpoint.pt")
    model = checkpoint_model(
        small_network(), tmp_path / "checkpoint.pt", image_size=(64, 64), label_grouping="acr5"
    )
    prediction = model.predict(image())
    assert prediction.nodule_probability is not None
    assert prediction.nodule_probability.shape == (50, 70)
    assert prediction.level_probabilities is not None
    assert prediction.level_probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        batch = inference_preprocessing((64, 64))(torch.as_tensor(image().T)[None])[None]
        eager = torch.softmax(network(batch)["cls"], dim=1)[0].numpy()
    np.testing.assert_allclose(prediction.level_probabilities, eager, atol=1e-5)


def test_torchscript_with_and_without_an_embedded_config(tmp_path: Path) -> None:
    network = MultitaskUNet(num_classes=3, seg_classes=2, embedding_dim=16).eval()
    traced = torch.jit.trace(network, torch.rand(1, 1, 32, 32), strict=False)
    config = {"image_size": [32, 32], "label_grouping": "risk3", "use_level": True}
    save_net_with_metadata(
        traced, str(tmp_path / "model"), more_extra_files={"train.json": json.dumps(config)}
    )
    model = load_model(tmp_path / "model.ts")
    assert model.kind == "torchscript"
    assert model.image_size == (32, 32)
    assert model.grouping is not None
    assert model.grouping.num_classes == 3
    prediction = model.predict(image())
    # The loaded archive gives what the traced module gives on the pre-processed image.
    batch = inference_preprocessing((32, 32))(torch.as_tensor(image().T)[None])
    with torch.no_grad():
        outputs = traced(torch.as_tensor(batch.as_tensor())[None])
    expected = torch.softmax(outputs["cls"], dim=1)[0].numpy()
    assert prediction.level_probabilities is not None
    np.testing.assert_allclose(prediction.level_probabilities, expected, atol=1e-6)
    assert prediction.nodule_probability is not None
    assert prediction.nodule_probability.shape == (50, 70)

    torch.jit.save(traced, str(tmp_path / "bare.ts"))
    with pytest.raises(ModelLoadError, match=r"bare.ts .*image_size"):
        load_model(tmp_path / "bare.ts")
