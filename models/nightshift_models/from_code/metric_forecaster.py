"""The pyfunc of a metric-forecast version, built from code when MLflow loads it: a `MetricForecaster` that reads
everything it serves from the version's `forecaster` artifact in `load_context`."""

from mlflow.models import set_model

from nightshift_models.metric_forecaster import MetricForecaster

set_model(MetricForecaster())
