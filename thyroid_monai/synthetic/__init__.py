"""A thyroid ultrasound phantom with known ACR descriptors, known level and simulated readers.

Typical use::

    from thyroid_monai.synthetic import Phantom, PhantomConfig

    phantom = Phantom(PhantomConfig(seed=0, readers=3, variability="moderate"))
    for case in phantom.cases(8):
        print(case.case_id, case.level, case.majority, case.spacing_mm)

``thyroid-monai synth`` writes such cases as NIfTI files and a MONAI datalist.
"""

from thyroid_monai.synthetic.descriptors import CLASS_MIX_PRESETS, descriptor_table
from thyroid_monai.synthetic.frame import BurnedInText, FramedImage, add_scanner_frame
from thyroid_monai.synthetic.phantom import Phantom, PhantomCase, PhantomConfig
from thyroid_monai.synthetic.preview import save_preview_grid
from thyroid_monai.synthetic.readers import (
    VARIABILITY_PRESETS,
    ReaderAnnotation,
    ReaderStyle,
    consensus_mask,
    majority_level,
)
from thyroid_monai.synthetic.render import NoduleGeometry, RenderedImage, RenderSettings

__all__ = [
    "CLASS_MIX_PRESETS",
    "VARIABILITY_PRESETS",
    "BurnedInText",
    "FramedImage",
    "NoduleGeometry",
    "Phantom",
    "PhantomCase",
    "PhantomConfig",
    "ReaderAnnotation",
    "ReaderStyle",
    "RenderSettings",
    "RenderedImage",
    "add_scanner_frame",
    "consensus_mask",
    "descriptor_table",
    "majority_level",
    "save_preview_grid",
]
