"""What a tracked run is, in MLflow's terms: the data it used, its tags and its description.

* :func:`datalist_lineage` fingerprints one split of a datalist: a digest of the datalist file,
  the split and fold, and the SHA-256 of every image and label file the split names (by their
  paths relative to the datalist, so a copy of the data elsewhere has the same digest). Two runs
  on the same data show the same dataset name and digest in MLflow; changing one pixel of one
  label changes it. :func:`dataset_input` makes it an MLflow dataset input (``mlflow.log_input``'s
  entity) with the split's context (``training``, ``validation``, ``testing``) and its source.
* :class:`RunRecord` gives a run's tags (method, task set, backbone, image size, TI-RADS scheme
  and grouping, data source, reader mode, git commit) and its one-line description (the
  ``mlflow.note.content`` tag MLflow shows as the run's description), so runs of different
  methods or data can be filtered (``tags.method = 'camegrad+rlar'``) and compared.

The bundle's tracking handlers log both when a run starts (``configs/tracking.yaml``); the
benchmark scripts set the same tags on their runs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Run
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from thyroid_monai import keys
from thyroid_monai.data import PATH_KEYS, Split, datalist_split, load_datalist

CONTEXTS: Mapping[str, str] = {
    "train": "training",
    "validate": "validation",
    "test": "testing",
    "all": "all",
}
"""MLflow dataset context of each datalist split."""
DESCRIPTION_TAG = MLFLOW_RUN_NOTE
GIT_COMMIT_TAG = "mlflow.source.git.commit"
REPOSITORY = Path(__file__).resolve().parents[2]
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DatalistLineage:
    """One split of a datalist, fingerprinted.

    Attributes:
        name: Dataset name shown in MLflow (``<datalist name>_<split>[_fold<n>]``).
        digest: 16 hex digits of SHA-256 over the datalist's hash, the split, the fold and every
            file's relative path and hash.
        datalist_sha256: SHA-256 of the datalist file.
        datalist: Absolute path of the datalist (the dataset's source).
        source: Where the data came from (the datalist's ``source``: ``phantom``, ``dicom``...).
        split: ``train``, ``validate``, ``test`` or ``all``.
        fold: Validation fold (meaningful for ``train`` and ``validate``).
        items: Images in the split.
        patients: Distinct patients in the split.
        files: Files hashed (images, labels, reader labels).
    """

    name: str
    digest: str
    datalist_sha256: str
    datalist: str
    source: str
    split: str
    fold: int
    items: int
    patients: int
    files: int

    @property
    def context(self) -> str:
        """MLflow's dataset context of the split."""
        return CONTEXTS.get(self.split, self.split)

    def profile(self) -> dict[str, Any]:
        """What MLflow shows as the dataset's profile."""
        return {"items": self.items, "patients": self.patients, "files": self.files,
                "split": self.split, "fold": self.fold, "source": self.source,
                "datalist_sha256": self.datalist_sha256}  # fmt: skip


def _item_files(item: Mapping[str, Any]) -> list[str]:
    files: list[str] = []
    for key in PATH_KEYS:
        value = item.get(key)
        if isinstance(value, str):
            files.append(value)
        elif isinstance(value, list):
            files.extend(v for v in value if isinstance(v, str))
    return files


def data_source(datalist: Mapping[str, Any]) -> str:
    """The datalist's data source: its ``source`` header, else its items' sources, else its name."""
    header = datalist.get("source")
    if isinstance(header, str) and header:
        return header
    items = datalist.get("training", []) + datalist.get("testing", [])
    sources = sorted({str(i["source"]) for i in items if isinstance(i, dict) and "source" in i})
    return ",".join(sources) or str(datalist.get("name", "unknown"))


@cache
def _cached_sha256(path: str, size: int, modified: int) -> str:
    return file_sha256(path)


def _hash(path: Path) -> str:
    """SHA-256 of a file, computed once per process while the file is unchanged."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"datalist file not found: {path}") from None
    return _cached_sha256(str(path), status.st_size, status.st_mtime_ns)


def datalist_lineage(datalist: str | Path, split: Split, fold: int = 0) -> DatalistLineage:
    """Fingerprints one split of a datalist (see the module docstring).

    Raises:
        FileNotFoundError: If the datalist or a file it names is missing (names the file).
        ValueError: If the datalist is malformed or the split is empty.
    """
    path = Path(datalist).resolve()
    header = load_datalist(path)
    items = datalist_split(path, split, fold)
    relative = {
        name: Path(name).relative_to(path.parent).as_posix()
        for item in items
        for name in _item_files(item)
    }
    hashes = sorted((rel, _hash(Path(name))) for name, rel in relative.items())
    datalist_sha = file_sha256(path)
    fingerprint = {"datalist": datalist_sha, "split": split, "fold": fold, "files": hashes}
    digest = hashlib.sha256(json.dumps(fingerprint).encode("utf-8")).hexdigest()[:16]
    suffix = f"_fold{fold}" if split in ("train", "validate") else ""
    return DatalistLineage(
        name=f"{header.get('name', path.parent.name)}_{split}{suffix}",
        digest=digest,
        datalist_sha256=datalist_sha,
        datalist=str(path),
        source=data_source(header),
        split=split,
        fold=fold,
        items=len(items),
        patients=len({item.get(keys.PATIENT, index) for index, item in enumerate(items)}),
        files=len(hashes),
    )


class _DatalistDataset(MetaDataset):
    """MLflow's metadata-only dataset with the split's profile."""

    def __init__(self, lineage: DatalistLineage):
        self._lineage = lineage
        # MLflow's local-file source, named by type (resolving the path by guessing warns)
        source = get_dataset_source_from_json(json.dumps({"uri": lineage.datalist}), "local")
        super().__init__(source, name=lineage.name, digest=lineage.digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._lineage.profile()

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self.profile)
        return config


def dataset_input(lineage: DatalistLineage) -> DatasetInput:
    """The MLflow dataset input of a split: dataset (name, digest, source, profile) and tags."""
    tags = {
        MLFLOW_DATASET_CONTEXT: lineage.context,
        "split": lineage.split,
        "fold": str(lineage.fold),
        "source": lineage.source,
        "datalist_sha256": lineage.datalist_sha256,
    }
    return DatasetInput(
        dataset=_DatalistDataset(lineage)._to_mlflow_entity(),
        tags=[InputTag(key=key, value=value) for key, value in tags.items()],
    )


def dataset_inputs(run: Run) -> list[DatasetInput]:
    """The dataset inputs a run holds (none when it has no inputs record)."""
    return list(run.inputs.dataset_inputs) if run.inputs is not None else []


def git_commit(repository: str | Path = REPOSITORY) -> tuple[str, bool | None]:
    """The checked-out commit of the code and whether tracked files differ from it.

    Returns:
        ``(sha, dirty)``; ``("unknown", None)`` outside a git checkout or without git.
    """

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repository), *arguments],
            check=True, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return sha, dirty


@dataclass
class RunRecord:
    """A run's tags and description, from the components and settings it runs with.

    Args:
        tasks: The task set (its ``tracking_params``: ``learned``, ``label_grouping``...).
        gradient_method: The gradient method (its ``tracking_params``: ``name``).
        rlar: The RLAR regulariser, or ``None`` when off.
        backbone: Encoder name.
        image_size: Network input ``(x, y)``.
        tirads_scheme: ``acr`` or ``kwak``.
        label_grouping: Level classes (``acr5``...).
        reader_mode: How reader labels are used (``consensus``, ``sample``, ``soft``).
        datalist: The datalist the run reads.
        fold: Validation fold.
    """

    tasks: Any
    gradient_method: Any
    rlar: Any
    backbone: str
    image_size: Sequence[int]
    tirads_scheme: str
    label_grouping: str
    reader_mode: str
    datalist: str | Path
    fold: int = 0

    @classmethod
    def from_config(cls, parser: Any) -> RunRecord:
        """The record of a bundle config (a ``ConfigParser`` or ``ConfigWorkflow.parser``)."""
        values = {
            name: parser.get_parsed_content(name)
            for name in ("tasks", "gradient_method", "rlar", "backbone", "image_size",
                         "tirads_scheme", "label_grouping", "reader_mode", "datalist", "fold")
        }  # fmt: skip
        return cls(**values)

    def method(self) -> str:
        """The gradient method's registry name, ``+rlar`` when RLAR is on."""
        name = str(self.gradient_method.tracking_params()["name"])
        return f"{name}+rlar" if self.rlar is not None else name

    def tags(self) -> dict[str, str]:
        """The run's tags (the git commit also under MLflow's own key, which its UI shows)."""
        sha, dirty = git_commit()
        datalist = load_datalist(self.datalist)
        return {
            "method": self.method(),
            "tasks": str(self.tasks.tracking_params()["learned"]),
            "backbone": self.backbone,
            "image_size": "x".join(str(int(n)) for n in self.image_size),
            "tirads_scheme": self.tirads_scheme,
            "label_grouping": self.label_grouping,
            "data_source": data_source(datalist),
            "dataset": str(datalist.get("name", Path(self.datalist).parent.name)),
            "fold": str(self.fold),
            "reader_mode": self.reader_mode,
            "git_commit": sha,
            "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
            GIT_COMMIT_TAG: sha,
        }

    def description(self, purpose: str = "training", tags: Mapping[str, str] | None = None) -> str:
        """One line: what ran, on what, with which code (``tags``: :meth:`tags`, if at hand)."""
        tags = tags or self.tags()
        dirty = " (uncommitted changes)" if tags["git_dirty"] == "true" else ""
        return (
            f"{purpose.capitalize()} of {tags['tasks']} with {tags['method']}, {tags['backbone']} "
            f"at {tags['image_size']} px, {tags['tirads_scheme']}/{tags['label_grouping']} "
            f"levels, {tags['reader_mode']} readers; {tags['dataset']} ({tags['data_source']}) "
            f"fold {self.fold}; commit {tags['git_commit'][:10]}{dirty}"
        )
