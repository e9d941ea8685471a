"""Drift checks: a new snapshot against its reference, the champion's training snapshot.

Log snapshots get four kinds of check: the label distribution (PSI, with a permutation p-value),
message templates and tokens (Jensen–Shannon divergence on normalised text), message length (KS)
and embeddings (MMD on a sample of the champion's own sentence embeddings). Metric snapshots get
the value distribution (KS) and the hour-of-day seasonal profile, per series.

Each check has warn and severe thresholds from the `[drift]` settings. A difference that is not
significant at `drift.alpha` never raises a status, so small windows do not cry wolf. The report's
status is the worst of its checks; `label_shift` says whether a label check moved, which the
promotion gate reads together with a severe status as a sign of a labelling fault.

Each check keeps in its `detail` the small tables its picture is drawn from (shares of the most
moved categories, length histograms on shared bins, a 2-D projection of the embeddings, the worst
series' value histograms and hour-of-day profiles), so `render_html` draws the report from the
report alone: one HTML page with a matplotlib PNG per check, embedded as base64.

The package, by concern: `statistics` (the test statistics, their permutation p-values and grading), `checks`
(the log and metric checks and `compare_snapshots`), `page` (`render_html`), `tracking` (a registered version
against the champion: `check_drift` logs the report on the version's run and tags it).
"""

from pipelines.data.drift.checks import Embedder, check_settings, compare_snapshots, log_checks, metric_checks
from pipelines.data.drift.page import check_picture, render_html
from pipelines.data.drift.statistics import (
    STATUSES,
    Check,
    categorical_test,
    grade,
    histogram,
    js_divergence,
    mmd2,
    projection,
    psi,
    template,
    worst,
)
from pipelines.data.drift.tracking import DriftNotChecked, check_drift, sentence_embedder

__all__ = [
    "STATUSES", "Check", "DriftNotChecked", "Embedder", "categorical_test", "check_drift", "check_picture", "check_settings",
    "compare_snapshots", "grade", "histogram", "js_divergence", "log_checks", "metric_checks", "mmd2", "projection", "psi",
    "render_html", "sentence_embedder", "template", "worst",
]
