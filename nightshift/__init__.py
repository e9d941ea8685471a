"""The `nightshift` command line (`nightshift.cli`): the one place that drives both stages, the offline pipelines
(`pipelines`) and the online server (`serving`), so that `pipelines` never imports `serving`."""
