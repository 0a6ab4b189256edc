"""thyroid_monai: a MONAI-based pipeline for thyroid ultrasound.

One network predicts the nodule mask and the ACR TI-RADS level; data preparation turns DICOM
exports, public datasets and a synthetic phantom into MONAI datalists; training is tracked in
MLflow.
"""

__version__ = "0.1.0"
