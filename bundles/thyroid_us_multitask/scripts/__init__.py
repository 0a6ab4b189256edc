"""Bundle scripts: kept thin on purpose, the logic lives in the thyroid_monai package."""
