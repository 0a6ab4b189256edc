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

``--knockout`` (alone, no image rendered, no network trained) asks instead how far the level can
get when one or two descriptor categories are *unknown* (a head that never learns them). It draws
the descriptors of the phantom's first ``--draws`` patients with the phantom's own sampler (the
first 600 are the nodules ``accuracy.py --quick`` renders) and, for every category and every
pair of categories, levels each nodule in three ways: the **Bayes** decision (the most probable
level given the known categories, computed exactly by marginalising the unknown ones over the
phantom's descriptor distribution), the **quadratic** Bayes decision (the level that minimises
the expected squared level error, which is what the quadratic kappa penalises), and the
**majority** substitute (the unknown category set to its most frequent value and the ACR chart
applied: a head stuck at the majority class). Scores against the true level on the 5 ACR
levels: macro-F1, quadratic-weighted kappa and accuracy (``level_knockout.json``).

    python benchmarks/level_ceiling.py --images 600 --epochs 20   # about 6 minutes on 2 cores
    python benchmarks/level_ceiling.py --knockout                 # about 15 seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from thyroid_monai.synthetic import PhantomConfig
from thyroid_monai.tirads import AcrDescriptors, LabelGrouping

from accuracy import QUICK, RESULTS, dataset, phantom_config
from machine import describe_machine

REPOSITORY = Path(__file__).resolve().parents[1]
CATEGORIES = ("composition", "echogenicity", "shape", "margin", "foci")
"""The five ACR descriptor categories, as named on :class:`AcrDescriptors`."""
DECISIONS = ("bayes", "quadratic", "majority")


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


def phantom_nodules(config: PhantomConfig, count: int) -> list[AcrDescriptors]:
    """The true descriptors of the phantom's patients ``0..count-1``, without rendering them.

    ``Phantom.patient`` draws the descriptors first from the patient's own generator, so the same
    draw here gives the same nodules (the test checks it against rendered patients).
    """
    from thyroid_monai.synthetic.descriptors import (
        descriptor_table,
        resolve_class_mix,
        sample_descriptors,
    )
    from thyroid_monai.synthetic.phantom import Phantom

    phantom = Phantom(config)
    mix = resolve_class_mix(config.class_mix)
    table = descriptor_table(config.one_point_level)
    return [
        sample_descriptors(np.random.default_rng(phantom.patient_seed(index)), mix, table)
        for index in range(count)
    ]


def descriptor_distribution(config: PhantomConfig) -> dict[AcrDescriptors, float]:
    """The exact probability of every descriptor combination the phantom draws.

    The sampler draws a level from the class mix, then a combination of that level in proportion
    to its prior weight, so ``P(combination) = P(level) * weight / (weights of the level)``.
    """
    from thyroid_monai.synthetic.descriptors import descriptor_table, resolve_class_mix

    mix = resolve_class_mix(config.class_mix)
    table = descriptor_table(config.one_point_level)
    level_weight: dict[str, float] = defaultdict(float)
    for level, weight in zip(table.levels, table.weights, strict=True):
        level_weight[level] += float(weight)
    return {
        combo: mix[level] * float(weight) / level_weight[level]
        for combo, level, weight in zip(table.combos, table.levels, table.weights, strict=True)
        if mix[level] > 0
    }


def known_part(descriptors: AcrDescriptors, unknown: Sequence[str]) -> tuple[Hashable, ...]:
    """The values of the categories that are not unknown, in :data:`CATEGORIES` order."""
    return tuple(getattr(descriptors, c) for c in CATEGORIES if c not in unknown)


def level_of(descriptors: AcrDescriptors, config: PhantomConfig, grouping: LabelGrouping) -> int:
    """The class index of the ACR level of ``descriptors`` under the phantom's chart options."""
    return grouping.index(acr_level_cached(descriptors, config.one_point_level))


@lru_cache(maxsize=65_536)
def acr_level_cached(descriptors: AcrDescriptors, one_point_level: str) -> str:
    """``tirads.acr_level_of``, cached: many nodules share a few hundred combinations."""
    from thyroid_monai.tirads import acr_level_of

    return acr_level_of(descriptors, one_point_level=one_point_level)  # type: ignore[arg-type]


def bayes_decisions(
    distribution: Mapping[AcrDescriptors, float],
    unknown: Sequence[str],
    config: PhantomConfig,
    grouping: LabelGrouping,
) -> dict[str, dict[tuple[Hashable, ...], int]]:
    """Per value of the known categories: the most probable level and the quadratic-cost level.

    ``P(level | known)`` is the exact marginal of the distribution over the unknown categories.
    The quadratic decision minimises ``E[(predicted - true)^2 | known]`` over the class indices.
    """
    posterior: dict[tuple[Hashable, ...], np.ndarray] = defaultdict(
        lambda: np.zeros(grouping.num_classes)
    )
    for combo, probability in distribution.items():
        posterior[known_part(combo, unknown)][level_of(combo, config, grouping)] += probability
    classes = np.arange(grouping.num_classes)
    cost = (classes[:, None] - classes[None, :]) ** 2  # cost[predicted, true]
    return {
        "bayes": {known: int(p.argmax()) for known, p in posterior.items()},
        "quadratic": {known: int((cost @ p).argmin()) for known, p in posterior.items()},
    }


def majority_values(distribution: Mapping[AcrDescriptors, float]) -> dict[str, Hashable]:
    """The most probable value of each category (for foci: the most probable set of foci)."""
    majority = {}
    for category in CATEGORIES:
        mass: dict[Hashable, float] = defaultdict(float)
        for combo, probability in distribution.items():
            mass[getattr(combo, category)] += probability
        majority[category] = max(mass, key=mass.__getitem__)
    return majority


def level_scores(labels: np.ndarray, predictions: np.ndarray, classes: int) -> dict[str, float]:
    """Macro-F1, quadratic-weighted kappa and accuracy with the project's score functions."""
    from thyroid_monai.engine.scores import accuracy, macro_f1, quadratic_weighted_kappa

    one_hot = np.eye(classes)[predictions]
    return {
        "macro_f1": macro_f1(labels, one_hot),
        "qwk": quadratic_weighted_kappa(labels, one_hot),
        "accuracy": accuracy(labels, one_hot),
    }


def knockout_sets() -> list[tuple[str, ...]]:
    """Nothing unknown, each category alone, then every pair of categories."""
    return [(), *((c,) for c in CATEGORIES), *itertools.combinations(CATEGORIES, 2)]


def knockout_predictions(
    nodules: Sequence[AcrDescriptors],
    unknown: Sequence[str],
    config: PhantomConfig,
    grouping: LabelGrouping,
) -> dict[str, np.ndarray]:
    """Each decision's predicted class index for every nodule with ``unknown`` unknown."""
    distribution = descriptor_distribution(config)
    tables = bayes_decisions(distribution, unknown, config, grouping)
    majority = {c: v for c, v in majority_values(distribution).items() if c in unknown}
    predictions = {
        name: np.asarray([table[known_part(n, unknown)] for n in nodules])
        for name, table in tables.items()
    }
    predictions["majority"] = np.asarray(
        [level_of(replace(n, **majority), config, grouping) for n in nodules]  # type: ignore[arg-type]
    )
    return predictions


def test_set_spread(
    labels: np.ndarray, predictions: np.ndarray, classes: int, size: int
) -> dict[str, float]:
    """Standard deviation of each score over consecutive test sets of ``size`` nodules."""
    blocks = [
        level_scores(labels[start : start + size], predictions[start : start + size], classes)
        for start in range(0, len(labels) - size + 1, size)
    ]
    return {name: float(np.std([b[name] for b in blocks], ddof=1)) for name in blocks[0]}


def knockout_table(
    nodules: Sequence[AcrDescriptors],
    config: PhantomConfig,
    grouping: LabelGrouping,
    test_size: int,
) -> list[dict[str, object]]:
    """One row per knockout set: each decision's scores against the true level.

    Each decision also gives the spread of its scores over test sets of ``test_size`` nodules
    (``test_set_sd``): how far one benchmark's held-out set can land from the ceiling by chance.
    """
    labels = np.asarray([level_of(n, config, grouping) for n in nodules])
    classes = grouping.num_classes
    rows: list[dict[str, object]] = []
    for unknown in knockout_sets():
        predictions = knockout_predictions(nodules, unknown, config, grouping)
        rows.append({
            "unknown": "+".join(unknown) or "nothing",
            **{name: {**level_scores(labels, predictions[name], classes),
                      "test_set_sd": test_set_spread(labels, predictions[name], classes,
                                                     test_size)}
               for name in DECISIONS},
        })  # fmt: skip
    return rows


def value_name(value: Hashable) -> str:
    """A descriptor value as written in the datalists (a set of foci: sorted, joined by '+')."""
    if isinstance(value, frozenset):
        return "+".join(sorted(str(v) for v in value)) or "none"
    return str(value)


def descriptors_per_level(
    nodules: Sequence[AcrDescriptors], config: PhantomConfig, grouping: LabelGrouping
) -> dict[str, dict[str, dict[str, float]]]:
    """Share of each category's values among the drawn nodules of each level."""
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for index, level in enumerate(grouping.class_names):
        members = [n for n in nodules if level_of(n, config, grouping) == index]
        shares[level] = {
            category: {
                value_name(v): round(k / len(members), 4)
                for v, k in Counter(getattr(n, category) for n in members).most_common()
            }
            for category in CATEGORIES
        }
    return shares


def knockout(draws: int, out: Path, command: str) -> dict[str, object]:
    """Scores every knockout set on ``draws`` phantom nodules; writes ``level_knockout.json``."""
    from thyroid_monai.tirads import get_grouping

    started = time.perf_counter()
    config = phantom_config("none", QUICK)
    grouping = get_grouping("acr5", "acr")
    nodules = phantom_nodules(config, draws)
    # the quick benchmark's held-out patients: 240 images, two views of each nodule
    test_size = round(QUICK.images * QUICK.test_fraction / config.images_per_patient)
    levels = Counter(grouping.class_names[level_of(n, config, grouping)] for n in nodules)
    distribution = descriptor_distribution(config)
    result: dict[str, object] = {
        "command": command,
        "phantom": config.to_dict(),
        "grouping": grouping.name,
        "nodules": draws,
        "test_set_nodules": test_size,
        "level_counts": {level: levels[level] for level in grouping.class_names},
        "combinations": len(distribution),
        "majority_values": {c: value_name(v) for c, v in majority_values(distribution).items()},
        "knockout": knockout_table(nodules, config, grouping, test_size),
        "descriptors_per_level": descriptors_per_level(nodules, config, grouping),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "level_knockout.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_knockout(rows: Sequence[Mapping[str, object]]) -> None:
    """The knockout table as Markdown (macro-F1 / QWK / accuracy per decision)."""
    print("| unknown | " + " | ".join(f"{d} F1 / QWK / acc" for d in DECISIONS) + " |")
    print("|---|" + "---|" * len(DECISIONS))
    for row in rows:
        cells = [
            " / ".join(f"{row[d][m]:.3f}" for m in ("macro_f1", "qwk", "accuracy"))  # type: ignore[index]
            for d in DECISIONS
        ]
        print(f"| {row['unknown']} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    unknown_help = "only the unknown-category ceilings (no rendering or training)"
    parser.add_argument("--knockout", action="store_true", help=unknown_help)
    parser.add_argument("--draws", type=int, default=100_000,
                        help="phantom nodules drawn for --knockout")  # fmt: skip
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--crop", type=int, default=64, help="crop side in rendered pixels")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "benchmarks/.work/level")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/level_ceiling.py " + shlex.join(arguments)
    if args.knockout:
        result = knockout(args.draws, args.out, command)
        print_knockout(result["knockout"])  # type: ignore[arg-type]
        print(json.dumps({k: result[k] for k in ("level_counts", "majority_values", "seconds")}))
        return
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
        "command": command,
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
