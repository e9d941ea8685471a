"""The files MLflow runs to build a version's pyfunc when it loads the version (models-from-code): each makes one
empty pyfunc with `mlflow.models.set_model`, and `load_context` then reads the version's artifacts. A version
holds its file from here, its data files and this package's source; no pickled Python object.

Not imported by nightshift itself: `nightshift_models.text_classifier.TextClassifier.FROM_CODE` and
`nightshift_models.metric_forecaster.MetricForecaster.FROM_CODE` name the file `log_version` logs.
"""
