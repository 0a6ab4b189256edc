"""Dataset-level pipelines: converters per source, datalists and folds, dataset audits.

Everything here produces the same output: NIfTI images and masks with their spacing, and a MONAI
datalist JSON whose items use the keys of :mod:`thyroid_monai.keys`.
"""
