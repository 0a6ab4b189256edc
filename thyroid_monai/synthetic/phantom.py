"""The phantom: patients with one nodule each, several views, several readers.

A :class:`Phantom` turns a seed into an endless, reproducible sequence of patients. Patient ``i``
depends only on the seed and ``i`` (NumPy ``SeedSequence`` children), so a dataset of 400 images
starts with the same patients as one of 200, and patients can be rendered in any order or in
parallel processes with identical results.

Each patient has one nodule (one set of ACR descriptors, one outline) seen in
``images_per_patient`` views that differ in acquisition (spacing, gain, speckle, position in the
lobe, anatomy at the sides). Every view is annotated by every reader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from thyroid_monai.synthetic.descriptors import (
    descriptor_table,
    resolve_class_mix,
    sample_descriptors,
)
from thyroid_monai.synthetic.frame import BurnedInText, FramedImage, add_scanner_frame
from thyroid_monai.synthetic.readers import (
    ReaderAnnotation,
    ReaderStyle,
    annotate,
    consensus_mask,
    majority_level,
    sample_reader_styles,
)
from thyroid_monai.synthetic.render import RenderedImage, RenderSettings, render_image
from thyroid_monai.tirads import AcrDescriptors, AcrPoints, acr_level_of, acr_points


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that defines a phantom dataset; the same config gives the same bytes.

    Attributes:
        seed: Root seed.
        readers: Simulated readers per image.
        variability: Reader disagreement preset: ``none``, ``moderate`` or ``strong``.
        class_mix: Level mix: a preset (``uniform``, ``clinical``) or level-to-weight mapping.
        images_per_patient: Views of each patient's nodule.
        one_point_level: Level of a 1-point ACR total (see ``tirads.acr_level``).
        render: Acquisition and anatomy ranges.
    """

    seed: int = 0
    readers: int = 3
    variability: str = "moderate"
    class_mix: str | Mapping[str, float] = "uniform"
    images_per_patient: int = 2
    one_point_level: str = "TR1"
    render: RenderSettings = field(default_factory=RenderSettings)

    def __post_init__(self) -> None:
        if self.images_per_patient < 1:
            raise ValueError(
                f"images_per_patient must be at least 1, got {self.images_per_patient}"
            )
        if self.one_point_level not in ("TR1", "TR2"):
            raise ValueError(f"one_point_level must be TR1 or TR2, got {self.one_point_level!r}")
        resolve_class_mix(self.class_mix)  # validates early, with a clear message

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary (recorded in the datalist)."""
        values = asdict(self)
        values["class_mix"] = resolve_class_mix(self.class_mix)
        return values


@dataclass
class PhantomCase:
    """One rendered, annotated image and everything known about it."""

    case_id: str
    patient: str
    view: int
    descriptors: AcrDescriptors
    points: AcrPoints
    level: str
    rendered: RenderedImage
    annotations: list[ReaderAnnotation]
    consensus: np.ndarray
    majority: str
    frame: FramedImage

    @property
    def image(self) -> np.ndarray:
        """The tissue image, ``(rows, columns)``."""
        return self.rendered.image

    @property
    def mask(self) -> np.ndarray:
        """The true nodule mask."""
        return self.rendered.mask

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """``(x, y)`` pixel spacing in millimetres."""
        return self.rendered.spacing_mm

    def nodule_size_mm(self) -> dict[str, float]:
        """Transverse (x) and anteroposterior (y) extent of the true mask in millimetres."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return {
            "transverse": float((cols[-1] - cols[0] + 1) * self.spacing_mm[0]),
            "ap": float((rows[-1] - rows[0] + 1) * self.spacing_mm[1]),
        }


class Phantom:
    """Reproducible generator of phantom patients.

    Args:
        config: The dataset definition.

    Example:
        >>> phantom = Phantom(PhantomConfig(seed=0, readers=3, variability="moderate"))
        >>> cases = phantom.patient(0)  # the views of patient 0, each with 3 reader annotations
    """

    def __init__(self, config: PhantomConfig):
        self.config = config
        root = np.random.SeedSequence(config.seed)
        style_seed, self._patient_seeds = root.spawn(2)
        self.reader_styles: list[ReaderStyle] = sample_reader_styles(
            np.random.default_rng(style_seed), config.readers, config.variability
        )
        self._mix = resolve_class_mix(config.class_mix)
        self._table = descriptor_table(config.one_point_level)

    def patient_seed(self, index: int) -> np.random.SeedSequence:
        """Seed of patient ``index``: independent of how many patients are generated."""
        return np.random.SeedSequence(
            self._patient_seeds.entropy, spawn_key=(*self._patient_seeds.spawn_key, index)
        )

    def patient(self, index: int, views: int | None = None) -> list[PhantomCase]:
        """Renders the views of patient ``index``.

        Args:
            index: Patient number (0-based).
            views: Number of views; defaults to ``config.images_per_patient``.

        Returns:
            One case per view.
        """
        rng = np.random.default_rng(self.patient_seed(index))
        config = self.config
        descriptors = sample_descriptors(rng, self._mix, self._table)
        points = acr_points(descriptors)
        level = acr_level_of(descriptors, one_point_level=config.one_point_level)  # type: ignore[arg-type]
        patient_id = f"P{index + 1:05d}"
        side = "RT" if rng.random() < 0.5 else "LT"
        text = BurnedInText.sample(rng, side)
        cases = []
        geometry = None
        for view in range(views or config.images_per_patient):
            rendered = render_image(rng, descriptors, config.render, geometry=geometry, side=side)
            geometry = rendered.geometry  # the same nodule in every view
            annotations = annotate(
                rng,
                self.reader_styles,
                descriptors,
                rendered.mask,
                rendered.geometry,
                rendered.spacing_mm,
            )
            cases.append(
                PhantomCase(
                    case_id=f"{patient_id}_{view + 1}",
                    patient=patient_id,
                    view=view + 1,
                    descriptors=descriptors,
                    points=points,
                    level=level,
                    rendered=rendered,
                    annotations=annotations,
                    consensus=consensus_mask([a.mask for a in annotations]),
                    majority=majority_level([a.level for a in annotations]),
                    frame=add_scanner_frame(rendered.image, rendered.spacing_mm, text),
                )
            )
        return cases

    def cases(self, count: int) -> Iterator[PhantomCase]:
        """The first ``count`` images, patient after patient."""
        per_patient = self.config.images_per_patient
        for index in range(-(-count // per_patient)):
            views = min(per_patient, count - index * per_patient)
            yield from self.patient(index, views)
