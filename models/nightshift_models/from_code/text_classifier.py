"""The pyfunc of a log model version (log-anomaly, failure-rca), built from code when MLflow loads it: a
`TextClassifier` that reads everything it serves from the version's `checkpoint` artifact in `load_context`."""

from mlflow.models import set_model

from nightshift_models.text_classifier import TextClassifier

set_model(TextClassifier())
