"""The code of a registered model (MLflow models-from-code): the pyfunc is built, not unpickled."""

from mlflow.models import set_model

from thyroid_monai.tracking.served_model import UltrasoundModel

set_model(UltrasoundModel())
