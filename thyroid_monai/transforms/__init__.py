"""MONAI transforms for thyroid ultrasound: array transforms with ``...d`` dictionary wrappers."""

from thyroid_monai.transforms.labels import TiradsToIndex, TiradsToIndexd

__all__ = ["TiradsToIndex", "TiradsToIndexd"]
