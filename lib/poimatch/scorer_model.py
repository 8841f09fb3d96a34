"""The registered model's code (MLflow models from code): ``python_model`` of
:func:`poimatch.lifecycle.tracking.log_matcher` is this file, not a pickle. MLflow runs it when it
loads the model, with the ``poimatch`` package the model carries on ``sys.path``."""

from mlflow.models import set_model

from poimatch.scorer import PairScorer

set_model(PairScorer())
