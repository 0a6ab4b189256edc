"""thyroid_monai: a MONAI-based pipeline for thyroid ultrasound.

One network predicts the nodule mask and the ACR TI-RADS level; data preparation turns DICOM
exports, public datasets and a synthetic phantom into MONAI datalists; training is tracked in
MLflow.
"""

__version__ = "0.1.0"


def _quiet_unusable_gpu_dicom_decoder() -> None:
    """Hides MONAI's notices that its GPU DICOM decoder (nvImageCodec) is absent.

    MONAI 1.6 builds that reader inside every ``LoadImage``, whatever the files, and warns twice
    on each machine without nvImageCodec. This project reads DICOM through pydicom
    (:mod:`thyroid_monai.io.dicom`) and its datalists hold NIfTI files, so the notices say
    nothing a user can act on. Only these two messages are hidden.
    """
    import logging
    import warnings

    warnings.filterwarnings(
        "ignore",
        message="NvImgCodecPydicomReader: nvImageCodec decoder plugin",
        category=UserWarning,
    )

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith("nvImageCodec is not available")

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_Drop())


_quiet_unusable_gpu_dicom_decoder()
