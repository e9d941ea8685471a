"""Batch scoring, the night's last stage: log documents scored back into their source (`score_logs`), the root causes
of failed jobs in the same pass (`root_causes`), the challenger beside the champion (`shadow`), and the forecaster
champion's forecasts to the Pushgateway (`forecasts`). `serving/` answers online; both load versions through
`pipelines.registry.store.load_model`."""
