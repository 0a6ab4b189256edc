"""Reading and writing files: NIfTI, atomic writes (and, later, DICOM ultrasound)."""
