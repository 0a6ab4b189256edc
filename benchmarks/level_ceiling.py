"""Ceiling references for the TI-RADS level on the phantom: what the pixels allow.

Two references on the same data as ``accuracy.py`` (patient-level folds, held-out test patients,
scored against the phantom's truth):

* **ACR from the true descriptors**: ``tirads.acr_level_of`` of each item's true descriptors
  against its true level (1.0 by construction: the phantom's level *is* the chart applied to the
  sampled descriptors; a value below 1 would be a bug in the phantom or the chart);
* **a classifier on crops around the true nodule**: a plain ResNet-10 trained from scratch on
  ``--crop``-pixel crops centred on the *true* nodule (the nodule and a margin of its
  surroundings, at the rendered resolution), one-cycle schedule. It needs no mask and sees the
  nodule at full resolution, so it bounds what a level pathway that finds the nodule can reach
  at that resolution and data size.

    python benchmarks/level_ceiling.py --images 600 --epochs 20   # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from thyroid_monai.tirads import LabelGrouping

from accuracy import QUICK, RESULTS, dataset
from machine import describe_machine

REPOSITORY = Path(__file__).resolve().parents[1]


def centred_crop(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``image`` centred on the mask's bounding box (zero-padded)."""
    xs, ys = np.nonzero(mask > 0)
    centre = ((xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2)
    half = size // 2
    padded = np.pad(image, half)
    x, y = centre[0] + half, centre[1] + half
    return padded[x - half : x - half + size, y - half : y - half + size]


def load_crops(data: Path, items: list[dict], size: int, grouping: LabelGrouping) -> tuple:
    """Crops and true class indices of datalist items."""
    from thyroid_monai import keys
    from thyroid_monai.io.nifti import read_nifti_2d

    crops, labels = [], []
    for item in items:
        image, _ = read_nifti_2d(data / item[keys.IMAGE])
        mask, _ = read_nifti_2d(data / item[keys.LABEL_TRUE])
        crops.append(centred_crop(image.astype(np.float32) / 255.0, mask, size))
        labels.append(grouping.index(item[keys.TIRADS_TRUE]))
    return torch.from_numpy(np.stack(crops)[:, None]), torch.tensor(labels)


def train_crop_classifier(
    train: tuple, test: tuple, classes: int, epochs: int, seed: int
) -> np.ndarray:
    """Trains a ResNet-10 on the crops; returns the test probabilities."""
    from monai.networks.nets import resnet10

    torch.manual_seed(seed)
    network = resnet10(spatial_dims=2, n_input_channels=1, num_classes=classes)
    images, labels = train
    batches = max(1, len(images) // 32)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * batches
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        network.train()
        order = torch.randperm(len(images), generator=generator)
        for batch in order[: batches * 32].view(batches, -1):
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5  # lateral flips only
            x = torch.where(flip[:, None, None, None], x.flip(-2), x)
            loss = F.cross_entropy(network(x), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    network.eval()
    with torch.no_grad():
        return torch.softmax(network(test[0]), dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--crop", type=int, default=64, help="crop side in rendered pixels")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks/.work/level")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from thyroid_monai import keys
    from thyroid_monai.data import datalist_split
    from thyroid_monai.engine.scores import macro_f1, quadratic_weighted_kappa
    from thyroid_monai.tirads import AcrDescriptors, acr_level_of, get_grouping

    started = time.perf_counter()
    settings = replace(QUICK, images=args.images)
    data = dataset(args.work, "none", settings, radiomics=False)
    grouping = get_grouping("acr5", "acr")
    test_items = datalist_split(data / "datalist.json", "test")
    every = datalist_split(data / "datalist.json", "all")
    chart = [
        acr_level_of(AcrDescriptors.from_dict(item[keys.DESCRIPTORS])) == item[keys.TIRADS_TRUE]
        for item in every
    ]
    test = load_crops(data, test_items, args.crop, grouping)
    folds = []
    for fold in args.folds:
        items = datalist_split(data / "datalist.json", "train", fold)
        train = load_crops(data, items, args.crop, grouping)
        probabilities = train_crop_classifier(train, test, grouping.num_classes, args.epochs,
                                              args.seed + fold)  # fmt: skip
        labels = test[1].numpy()
        folds.append({
            "fold": fold,
            "macro_f1": macro_f1(labels, probabilities),
            "qwk": quadratic_weighted_kappa(labels, probabilities),
            "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        })  # fmt: skip
        print(json.dumps(folds[-1]), flush=True)
    result = {
        "command": "python benchmarks/level_ceiling.py " + shlex.join(sys.argv[1:]),
        "settings": {**asdict(settings), "epochs": args.epochs, "crop": args.crop},
        "acr_from_true_descriptors": float(np.mean(chart)),
        "items_checked": len(chart),
        "crop_classifier": folds,
        "crop_classifier_mean": {
            name: float(np.mean([f[name] for f in folds]))
            for name in ("macro_f1", "qwk", "accuracy")
        },
        "seconds": round(time.perf_counter() - started, 1),
        "machine": describe_machine(threads=args.threads),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "level_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("acr_from_true_descriptors", "crop_classifier_mean",
                                              "seconds")}))  # fmt: skip


if __name__ == "__main__":
    main()
