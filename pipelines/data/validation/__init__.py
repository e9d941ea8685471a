"""Data validation gate: the Great Expectations suites of `expectations/` run over a snapshot.

The suites live in a GE file context (`expectations/gx`, one suite per dataset kind: `logs`,
`metrics`); thresholds in them are `$PARAMETER`s filled from settings `[validation]`. Every
expectation names in `meta.view` the table it reads:

- `schema`: one row, the snapshot's Arrow column types. Checked first; a wrong schema stops there,
  since every other check would only repeat it.
- `rows`, `labels`: the data itself (labels: one row per root-cause label), validated batch by
  batch, `validation.batch_rows` rows at a time, and the per-batch results merged (counts summed,
  examples kept), so memory stays flat however large the snapshot.
- `summary`, `classes`, `series`: small aggregate tables built while streaming (anomaly and
  duplicate ratios, rows per class, per-series NaN/gap ratios and history), validated once.

`validate_snapshot` writes `DIR.validation/result.json`, a Data Docs site `DIR.validation/data_docs/`
and `DIR.validation/report.html` beside the snapshot `DIR` (`report_dir`; never inside it: a snapshot is immutable,
and on an object store its manifest is its commit marker). Locally the folder is swapped into place atomically; on an
object store `result.json` is uploaded last, and a reader trusts it only for the snapshot's own content hash. `report.html` is nightshift's own page, self-contained (inline CSS, no CDN): each
measured value against its bound (the anomaly ratio as a ratio against its bounds, not "0%
unexpected") and the failed rows with examples. Training logs that folder with its run (`log_to_active_run`) and tags
the registered version with `validation.status`.

Failing examples are data shown to people: each text in them is cut to setting `inputs.show_chars` characters, its full
size stated (`_shown`), once, where the merged results are made; everything built from them (Data Docs, `result.json`,
the CLI's summary, `report.html`, the night's summary) shows them as they are.

The package, by concern: `suites` (Great Expectations: the suites, running one view, merging batches),
`profiles` (the schema row and the aggregates built while streaming), `run` (`validate_snapshot`: the run and
the report folder it writes), `page` (`report.html`), `results` (the report folder's names and reading a verdict
back), `tracking` (MLflow: the report on a training run, the run a stopped night records).
"""

from pipelines.data.validation.page import measurement, render_html
from pipelines.data.validation.profiles import LogProfile, MetricProfile, metric_names, parse_step, schema_view, type_family
from pipelines.data.validation.results import (
    DOCS_DIR,
    FAILED,
    NOT_RUN,
    PASSED,
    REPORT_DIR,
    REPORT_HTML,
    RESULT_FILE,
    WARN,
    ValidationFailed,
    brief,
    describe,
    read_report,
    report_dir,
    require_not_failed,
    validation_status,
    verdict,
)
from pipelines.data.validation.run import parse_value_ranges, validate_snapshot
from pipelines.data.validation.suites import GX_PROJECT, SUITES, load_suite
from pipelines.data.validation.tracking import log_to_active_run, record_stopped_run

__all__ = [
    "DOCS_DIR", "FAILED", "GX_PROJECT", "NOT_RUN", "PASSED", "REPORT_DIR", "REPORT_HTML", "RESULT_FILE", "SUITES", "WARN",
    "LogProfile", "MetricProfile", "ValidationFailed", "brief", "describe", "load_suite", "log_to_active_run", "measurement",
    "metric_names", "parse_step", "parse_value_ranges", "read_report", "record_stopped_run", "render_html", "report_dir",
    "require_not_failed", "schema_view", "type_family", "validate_snapshot", "validation_status", "verdict",
]
