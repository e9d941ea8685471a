"""Settings: one object, read from defaults < `nightshift.toml` < `NIGHTSHIFT_*` environment variables.

A section field `train.epochs` is set by `[train] epochs = 3` in the TOML file or by
`NIGHTSHIFT_TRAIN_EPOCHS=3`; a top-level field `home` by `NIGHTSHIFT_HOME`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import InputError, NightshiftError
from pipelines.storage import StoragePath
from pipelines.storage import is_remote as storage_is_remote
from pipelines.storage import path as storage_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(NightshiftError, ValueError):
    """A setting is missing or has a value that cannot be used; the message names the setting."""


class Secret:
    """A secret value: never shown by repr/str, so it cannot leak into logs, params or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class LogFields:
    """Where each log field lives in a document (dotted paths, ECS names by default)."""

    timestamp: str = "@timestamp"  # dotted field of each document's time (ISO-8601 or epoch)
    message: str = "message"  # the log line's text
    service: str = "service.name"  # the emitting service (a context field)
    level: str = "log.level"  # the log level (a context field; error levels mark a job's failure lines)
    host: str = "host.name"  # the emitting host or node
    anomaly: str = "labels.anomaly"  # the anomaly label (spellings in [inputs] anomaly_true / anomaly_false)
    root_cause: str = "labels.root_cause"  # a failed job's root causes (a list, or a comma-separated string of label-space names)
    job_id: str = "labels.job_id"  # the training job a line belongs to (lines are grouped into jobs by it)


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning hyper-parameters shared by the BERT models."""

    base_model: str = ""  # empty: the packaged MiniLM-L6 checkpoint
    epochs: int = 8  # at most; early stopping on validation PR-AUC (patience) ends it sooner
    batch_size: int = 32  # examples per optimiser step
    max_length: int = 64  # tokens per log line; longer lines are cut
    learning_rate: float = 5e-5  # AdamW learning rate of the fine-tune (linear decay with warm-up)
    weight_decay: float = 0.01  # AdamW weight decay
    patience: int = 2  # epochs without a better validation score before early stopping
    validation_fraction: float = 0.2  # at most this share of the rows, and of the positives, goes to the validation split
    max_train_examples: int = 4000  # distinct training texts kept at most (every positive first)
    max_validation_examples: int = 3000  # validation rows scored at most per epoch
    seed: int = 13  # seed of splits, sampling and initialisation
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # BERT fine-tune forward passes: auto (bf16 autocast on CUDA and on CPUs with AMX bf16, else fp32) | bf16 | fp32
    pooling: str = "cls"  # what the new head reads: cls ([CLS] pooler) | mean (mean of token vectors)
    cpu_threads: int = 0  # torch threads of one training task on CPU, any model, the forecaster included (0: torch's default, one per core); with N trainings at once, cores / N; 1 where the cores are shared with other jobs


@dataclass(frozen=True)
class ScoreSettings:
    """Batch scoring."""

    batch_size: int = 64  # texts per forward pass
    sort_window: int = 2048  # documents read at a time, and distinct new texts sorted by length, then batched, in one model call
    max_pending: int = 16_384  # documents held at most while a model call's texts gather (memory)
    max_length: int = 128  # tokens per text when scoring; longer texts are cut
    cache_texts: int = 100_000  # probabilities of this many recent distinct texts are reused across windows (0: off)
    runtime: str = "int8"  # BERT forward pass: int8 (the version's int8 ONNX graph on the CPU, where its registration check passed; else fp32) | fp32 (PyTorch); batch scoring and nightshift serve
    int8_min_agreement: float = 0.995  # at registration, the least share of is_anomaly decisions (each label's) on held-out texts that int8 must share with fp32, or the version serves fp32
    # the log-anomaly version that lost its gate or awaits it, scored beside the champion (pipelines/scoring/shadow.py)
    shadow: str = "fields"  # fields (ml.shadow.* on each document) | index (a sink of its own, shadow_sink) | off
    shadow_sink: str = ""  # index mode: a URI, an index on the sink's cluster, or a file path; empty: nightshift-ml-results-shadow / NAME.shadow.ndjson


@dataclass(frozen=True)
class RetrainSettings:
    """The nightly flow: which source, and which windows it trains and scores on."""

    log_source: str = ""  # empty: the embedded demo corpus under NIGHTSHIFT_HOME
    log_days: int = 4  # days of logs before the fresh window that the log models train on: the training window (the forecaster's is forecast.train_days)
    logical_date: str = ""  # empty: the day after the newest record in the source


@dataclass(frozen=True)
class RcaSettings:
    """Root-cause analysis."""

    label_space: str = ""  # empty: the default label space shipped in models/data
    knowledge_base: str = ""  # empty: models/data/remediation_kb.json (users extend a copy)
    # A night holds tens of failed jobs, not thousands of lines: smaller batches than [train].
    epochs: int = 6  # after the linear probe (pipelines.training.fine_tune.probe_head): a short, gentle fine-tune
    batch_size: int = 8  # jobs per optimiser step
    learning_rate: float = 1e-4  # AdamW learning rate of the fine-tune
    max_length: int = 128  # tokens of a job text (several lines)
    patience: int = 4  # epochs without a better validation micro-F1 before early stopping
    pooling: str = "mean"  # MiniLM is a sentence-embedding model: its mean generalises from few jobs, its [CLS] does not
    no_failure_examples: int = 200  # distinct ordinary log lines of the snapshot (no job, not anomalous, no error level) trained on as texts with no root cause
    description_examples: bool = True  # every family also trains on each label's descriptions as labelled texts (its name, its actions, the title and symptoms of knowledge-base entries naming it), so a cause worded in new words still meets its meaning
    selection: str = "templates"  # how the family and threshold are chosen: templates (candidates.cv_folds folds that each hold out whole first-error-line templates: every job scored in words its fold never trained on) | time (as log-anomaly: forward-chaining time folds below candidates.cv_below_positives, else one split)
    # below this TF-IDF cosine the knowledge-base fallback gives no entry and no actions (a benign
    # "INFO Nginx request 200 OK" is 0.15 from "disk full"; the demo's real unknown causes match at 0.29 and up).
    # Saved into each trained version; `nightshift serve` and the pyfunc param `kb_min_similarity` can override it.
    kb_min_similarity: float = 0.2


@dataclass(frozen=True)
class ElasticsearchSettings:
    """Elasticsearch connection, pull and write-back (the index pattern itself comes from the source URI)."""

    url: str = ""  # endpoint for `elasticsearch://INDEX` URIs and `nightshift es` commands
    cloud_id: str = ""  # Elastic Cloud deployment id, instead of a URL
    conn_id: str = ""  # Airflow connection (host, login, password, extras) read through the Elasticsearch provider
    api_key: Secret = field(default_factory=lambda: Secret(None))  # base64 "id:key", or "id:key"
    username: str = ""  # basic auth, with password
    password: Secret = field(default_factory=lambda: Secret(None))  # basic auth password (a secret: never printed)
    bearer_token: Secret = field(default_factory=lambda: Secret(None))  # OAuth/service-account token, instead of basic auth or an API key
    ca_certs: str = ""  # CA bundle for https; empty: the system CAs
    ssl_fingerprint: str = ""  # SHA-256 fingerprint of the server certificate, instead of a CA
    verify_certs: bool = True  # verify the server's TLS certificate (turn off only against a throwaway node)
    timeout: float = 30.0  # seconds per request
    retries: int = 5  # further attempts on 429/502/503/504 and connection errors, with exponential backoff
    retry_backoff: float = 0.5  # seconds before the first retry; doubles each time (capped at 30s)
    page_size: int = 5000  # hits per search_after page (200k docs read sorted: 57-65k docs/s at 5000, 39-42k at 1000)
    slices: int = 1  # parallel sliced reads of one point-in-time
    keep_alive: str = "5m"  # point-in-time keep-alive between pages
    tiebreaker: str = "_shard_doc"  # second sort key after the timestamp (a unique keyword field makes reads repeatable)
    extra_fields: str = ""  # comma-separated dotted fields also fetched (kept on the documents the source yields)
    unlabelled: str = "keep"  # documents lacking the anomaly label: keep | drop (counted either way)
    bulk_max_bytes: int = 5_000_000  # write-back batches are cut at this many bytes
    bulk_max_docs: int = 2000  # ... or this many documents read (fewer, larger requests cost the node less per update)
    bulk_concurrency: int = 2  # write-back bulk requests in flight at once (the node indexes one while the next arrives)
    retry_on_conflict: int = 3  # retries of a write-back update that met a concurrent change of the document
    platform_logs: str = "nightshift-platform-logs"  # data stream of nightshift's own log lines (`nightshift es ship-logs`; its template and lifecycle policy take this name)


@dataclass(frozen=True)
class MetricQueries:
    """The named PromQL queries the nightly flow snapshots (an empty query is skipped)."""

    gpu_util: str = "DCGM_FI_DEV_GPU_UTIL"  # PromQL of GPU utilisation (DCGM exporter)
    gpu_memory: str = "DCGM_FI_DEV_FB_USED"  # PromQL of GPU framebuffer memory used (DCGM exporter)
    request_latency: str = "request_latency_p99_seconds"  # PromQL of services' p99 request latency
    quota_use_ratio: str = "quota_group_use_ratio"  # PromQL of quota groups' used share


@dataclass(frozen=True)
class PrometheusSettings:
    """Where metrics come from (query_range) and where forecasts go (Pushgateway)."""

    url: str = ""  # empty: the embedded demo metric history under NIGHTSHIFT_HOME
    pushgateway: str = ""  # Pushgateway URL for forecasts and the platform's signals; empty: nothing is pushed
    username: str = ""  # basic auth, with password
    password: Secret = field(default_factory=lambda: Secret(None))  # basic auth password (a secret: never printed)
    bearer_token: Secret = field(default_factory=lambda: Secret(None))  # bearer token, instead of basic auth
    ca_file: str = ""  # CA bundle for https; empty: the system CAs
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""  # the client certificate's private key (mutual TLS)
    tls_verify: bool = True  # verify the server's TLS certificate
    timeout: float = 30.0  # seconds per request, also sent to Prometheus as its query timeout
    retries: int = 3  # attempts per request on connection errors, timeouts, 429 and 5xx
    concurrency: int = 4  # chunks of one query fetched in parallel
    max_points: int = 10_000  # points per series per request; Prometheus refuses more than 11,000
    max_gap_fraction: float = 0.5  # a series with more gaps than this in its window is refused
    forecast_job: str = "nightshift_forecast"  # Pushgateway job of the pushed forecasts
    deployment: str = ""  # label `nightshift_deployment` of every pushed group; cleanup deletes only this deployment's groups (empty: derived from the state folder)
    queries: MetricQueries = field(default_factory=MetricQueries)


@dataclass(frozen=True)
class ForecastSettings:
    """The LSTM metric forecaster: sampling, horizon and training."""

    step: str = "15m"  # resolution the series are ingested and forecast at
    lookback: int = 96  # steps of history the model reads (24h at 15m); data validation also requires this many samples of each series
    horizon: int = 8  # steps ahead it forecasts (2h at 15m)
    hidden_size: int = 32  # LSTM hidden units
    layers: int = 1  # stacked LSTM layers
    epochs: int = 15  # training epochs at most (early stopping may end sooner)
    batch_size: int = 256  # windows per optimiser step
    learning_rate: float = 3e-3  # Adam learning rate
    windows_per_epoch: int = 4096  # training windows sampled per epoch
    patience: int = 4  # epochs without a better validation MAE before early stopping
    validation_fraction: float = 0.15  # newest part of each series, by time
    train_days: int = 28  # days of metric history before the holdout that the nightly forecaster trains on (the log models' is retrain.log_days)
    holdout_days: int = 2  # the newest days of metric history: never trained on, the promotion gate's holdout
    seed: int = 13  # seed of window sampling and initialisation
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class ValidationSettings:
    """Thresholds of the Great Expectations gate (`nightshift validate`, and before every training run)."""

    warn_only: bool = False  # report failures as "warn" and let training go on (exploration)
    batch_rows: int = 100_000  # rows validated at a time: memory stays flat however large the snapshot
    examples: int = 5  # failing values shown per expectation in summaries
    # logs
    min_anomaly_ratio: float = 0.001  # share of labelled rows that are anomalous
    max_anomaly_ratio: float = 0.5  # share of labelled rows that may be anomalous at most
    max_duplicate_ratio: float = 0.1  # share of rows repeating an earlier row exactly
    min_text_length: int = 1  # characters of `message`
    max_text_length: int = 20_000  # characters of `message` at most
    min_rows_per_class: int = 10  # labelled rows per anomaly class (normal, anomalous)
    # metrics
    max_gap_ratio: float = 0.2  # share of a series' expected samples (first..last, at the step) missing
    max_nan_ratio: float = 0.1  # share of a series' samples that are NaN
    # metric=min:max, comma-separated; either bound may be empty
    value_ranges: str = ("DCGM_FI_DEV_GPU_UTIL=0:100,DCGM_FI_DEV_FB_USED=0:1000000,"
                         "request_latency_p99_seconds=0:3600,quota_group_use_ratio=0:1.5")


@dataclass(frozen=True)
class DriftSettings:
    """Drift of a new snapshot against the champion's training snapshot (`pipelines.data.drift`).

    A check warns at `*_warn` and is severe at `*_severe`, and only when significant at `alpha`.
    """

    alpha: float = 0.01  # permutation / KS p-value below which a difference counts
    permutations: int = 199  # permutations of the permutation tests (MMD, label shift)
    label_psi_warn: float = 0.1  # population stability index of the label distribution
    label_psi_severe: float = 0.25  # the same statistic's severe level
    template_js_warn: float = 0.1  # Jensen-Shannon distance of message-template frequencies
    template_js_severe: float = 0.3  # the same statistic's severe level
    token_js_warn: float = 0.05  # Jensen-Shannon distance of token frequencies
    token_js_severe: float = 0.2  # the same statistic's severe level
    length_ks_warn: float = 0.1  # Kolmogorov-Smirnov statistic of message lengths
    length_ks_severe: float = 0.3  # the same statistic's severe level
    embedding_mmd_warn: float = 0.02  # maximum mean discrepancy of the champion's BERT embeddings
    embedding_mmd_severe: float = 0.1  # the same statistic's severe level
    embedding_sample: int = 200  # messages per side embedded with the champion's BERT
    metric_value_ks_warn: float = 0.3  # worst series
    metric_value_ks_severe: float = 0.5  # the same statistic's severe level
    seasonal_warn: float = 0.5  # hour-of-day profile distance of the worst series, in reference standard deviations
    seasonal_severe: float = 0.8  # the same statistic's severe level
    max_rows: int = 50_000  # rows sampled per side
    seed: int = 13  # seed of sampling and permutations


# ---- inputs: how local files are read ------------------------------------------------------------------

INPUT_FORMATS = ("auto", "ndjson", "parquet", "csv", "tsv", "anomaly-tsv", "rca-tsv")
EPOCH_UNITS = ("auto", "s", "ms", "us", "ns")


@dataclass(frozen=True)
class InputSettings:
    """How `file://` sources are read: their format, numeric timestamps, and the spellings of the anomaly label.

    The column mapping of CSV/TSV files is `[fields]`: each field names the column it is read from.
    """

    format: str = "auto"  # auto (from the content) | ndjson | parquet | csv | tsv | anomaly-tsv | rca-tsv
    epoch_unit: str = "auto"  # numeric timestamps: auto (by magnitude) | s | ms | us | ns
    anomaly_true: str = "true,1,abnormal,anomaly,anomalous,yes"  # label values read as anomalous (comma-separated, any case)
    anomaly_false: str = "false,0,normal,-,no"  # label values read as normal ("-": BGL's mark for a non-alert line)
    metric_timestamp: str = "timestamp"  # metric CSV: the timestamp column
    metric_value: str = "value"  # metric CSV: the value column (other columns are labels; `__name__` names the metric)
    show_chars: int = 300  # a value shown to a person (CLI, reports, version pages) is cut to this many characters, its full size stated

# ---- end of inputs --------------------------------------------------------------------------------------


# ---- serve: the online server, `nightshift serve` ---------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """`nightshift serve`: one HTTP process answering with the champions (`serving/server.py`)."""

    host: str = "127.0.0.1"  # address to listen on (loopback by default; put TLS and keys in place before opening it)
    port: int = 8000  # port to listen on (0: a free one, printed)
    alias: str = "champion"  # the alias each model is served from
    models: str = "log-anomaly,failure-rca,metric-forecast"  # comma-separated registered models to serve
    refresh_seconds: float = 30.0  # how often the aliases are re-read; a moved alias is loaded, then swapped in
    max_batch: int = 64  # texts per forward pass when concurrent requests are batched together
    max_wait_ms: float = 0.0  # how long a forward pass waits for more requests once one is queued; what queued during the last pass goes in anyway, so under load requests batch without it (0: a lone request runs at once)
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_rows: int = 1024  # texts, or metric points, per request (more: 413)
    max_text_chars: int = 20_000  # characters of one text (more: that row is refused)
    min_history: float = 0.5  # share of the forecaster's lookback that must be observed (prometheus.max_gap_fraction's complement)
    short_history: str = "refuse"  # a forecast from a shorter history: refuse (422 / per-series error) | flag (answer, marked)
    threads: int = 0  # torch threads for the forward passes (0: torch's default)
    api_keys_file: str = ""  # file of API keys, one per line "NAME SHA256-HEX SCOPE[,SCOPE]" (scopes: score, admin, alerts; `nightshift serve-key` adds one); empty: $NIGHTSHIFT_HOME/api-keys
    metrics_public: bool = False  # /metrics answers without a key (true: for a Prometheus that scrapes without one)
    rate_limit: str = "600/minute"  # requests per API key (the `limits` library's notation); empty: no limit
    tls_certfile: str = ""  # PEM certificate chain: serve HTTPS (with tls_keyfile)
    tls_keyfile: str = ""  # its PEM private key

# ---- end of serve ---------------------------------------------------------------------------------------


# ---- alerts: nightshift serve's Alertmanager webhook, POST /v1/alerts ----------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """`POST /v1/alerts` of `nightshift serve` (`serving/alerts.py`): Alertmanager posts a failed job's alert, the
    failure-rca champion explains the job's log lines, `ml.rca.*` goes back onto them, the causes to `notify_url`."""

    job_label: str = "job_name"  # the alert label holding the failed job's id (kube-state-metrics' kube_job_failed has job_name), matched against the documents' fields.job_id
    log_source: str = ""  # Elasticsearch index pattern the job's lines are read from and ml.rca.* written back to (http(s)://host:port/INDEX-PATTERN or elasticsearch://INDEX-PATTERN); empty: retrain.log_source when that is Elasticsearch, else the alert's annotations alone
    text_annotations: str = "description,message,summary"  # comma-separated annotations whose text explains the job when Elasticsearch holds none of its lines
    max_job_docs: int = 10_000  # documents of one job read (oldest first) and written back at most
    notify_url: Secret = field(default_factory=lambda: Secret(None))  # where each job's causes and actions are posted (JSON with a Slack-compatible `text`; a secret, as a Slack webhook URL is); empty: not posted
    notify_timeout: float = 10.0  # seconds per notification request
    remember_jobs: int = 10_000  # answered job ids kept in memory, so that a re-sent alert is answered once (the oldest forgotten first)

# ---- end of alerts --------------------------------------------------------------------------------------


# ---- candidates: model families chosen on validation, language ------------------------------------------


@dataclass(frozen=True)
class CandidateSettings:
    """Which model families compete for `log-anomaly` and `failure-rca` each night, and how they are validated.

    Every family trains on the same snapshot and split; the one best on the task's primary metric (F1, micro-F1)
    on validation is registered (a tie goes to the cheaper: tfidf, then embedding, then bert).
    """

    families: str = "tfidf,embedding,bert"  # comma-separated: tfidf (word + char n-grams), embedding (frozen encoder + LR), bert (fine-tuned)
    context_fields: str = "level"  # snapshot columns prefixed to the text, e.g. "level,service" -> "[error] [kernel] message"; scoring reads them from each document (fields.level, ...), the pyfunc and nightshift serve from optional columns of the same names
    template_holdout: float = 0.2  # share of the validation rows given to whole message templates (failure-rca: first error lines) held out of training; the rest are the newest rows
    cv_below_positives: int = 200  # below this many positive rows (jobs with a root cause), the family and threshold are chosen by forward-chaining time folds, not one split
    cv_folds: int = 3  # those folds
    min_positives: int = 3  # fewer positive rows than this: the night trains nothing for the model and says why (the champion keeps serving)
    linear_probe: bool = True  # log-anomaly's BERT: fit the head on the frozen encoder first, then fine-tune (LP-FT; failure-rca always does)
    early_stopping_metric: str = "pr_auc"  # the BERT epoch kept: best validation PR-AUC (threshold-free; F1 jumps with few positives)
    max_unk_rate: float = 0.05  # [UNK] share of word pieces under the BERT tokenizer above which the run warns (language mismatch)

# ---- end of candidates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionSettings:
    """The champion/challenger gate (`pipelines.registry.gate`)."""

    margin: float = 0.005  # the challenger must beat the champion's primary metric by at least this
    guard_tolerance: float = 0.05  # a guard metric may regress by at most this
    guard_tolerances: str = "smape=2.0"  # per-metric overrides in the metric's own units (sMAPE is in percent)
    baseline_tolerance: float = 0.02  # both logs models: on the holdout the challenger may trail each of its gate baselines (the TF-IDF family trained on its snapshot) by at most this on the primary metric (F1, micro-F1)
    allow_not_run: bool = True  # promote when `validation.status` is not_run
    allow_warn: bool = True  # promote when `validation.status` is warn
    decay_tolerance: float = 0.1  # champion primary drop on the fresh window vs its own validation score
    lock_timeout: float = 300.0  # seconds to wait for the promotion lock; longer than lock_lease, so a retried gate outlasts a crashed one's lock
    lock_lease: float = 120.0  # a remote lock held by the same owner this long is taken as abandoned and broken
    auto_rollback: bool = True  # a decayed champion that @previous beats on the same fresh window (by `margin`) is rolled back to it
    rollback_quiet_days: float = 7.0  # no automatic rollback to a version rolled back from for decay this recently (no flapping)


@dataclass(frozen=True)
class AirflowSettings:
    """How the nightly DAG runs under Airflow (read when the DAG file is parsed, and by `make airflow`)."""

    training_pool: str = "nightshift_training"  # Airflow pool of the three training tasks
    training_pool_slots: int = 1  # size of that pool: trainings that run at once (each may use train.cpu_threads cores)
    retries: int = 2  # tries after the first of every task (training and promotion restart clean)
    retry_delay: float = 300.0  # seconds before the first retry; doubles each time
    max_retry_delay: float = 1800.0  # seconds, the most a retry waits


@dataclass(frozen=True)
class Settings:
    home: Path = Path.home() / ".nightshift"  # the state folder (stores, snapshots, nights, keys), NIGHTSHIFT_HOME; never inside the source tree or site-packages
    # NIGHTSHIFT_STORAGE: where tasks leave data for each other (snapshots, reports, scored files, night summaries): a
    # local folder or an object store, `s3://bucket/prefix` (endpoint and keys from the AWS_* variables); empty: home
    storage: str = ""
    service: str = "nightshift"  # the service name on nightshift's own log lines
    environment: str = ""  # `service.environment` on nightshift's own log lines (production, staging, ...); empty: left out
    tracking_uri: str = ""  # empty: SQLite in the state folder; MLFLOW_TRACKING_URI overrides
    experiment: str = "nightshift"  # the MLflow experiment the training runs go to
    ui_url: str = "http://127.0.0.1:5000"  # the MLflow UI that reports link into (`make ui` serves it here)
    fields: LogFields = field(default_factory=LogFields)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    rca: RcaSettings = field(default_factory=RcaSettings)
    elasticsearch: ElasticsearchSettings = field(default_factory=ElasticsearchSettings)
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    inputs: InputSettings = field(default_factory=InputSettings)  # how local files are read
    serve: ServeSettings = field(default_factory=ServeSettings)  # nightshift serve
    alerts: AlertSettings = field(default_factory=AlertSettings)  # nightshift serve's Alertmanager webhook
    candidates: CandidateSettings = field(default_factory=CandidateSettings)  # families, language
    airflow: AirflowSettings = field(default_factory=AirflowSettings)

    @property
    def mlflow_uri(self) -> str:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def deployment_id(self) -> str:
        """Names this deployment among others sharing a Pushgateway: `prometheus.deployment`, else a
        short hash of the state folder `home` (stable for one deployment, distinct between two)."""
        import hashlib

        return self.prometheus.deployment or hashlib.sha1(str(self.home).encode()).hexdigest()[:12]

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def storage_root(self) -> StoragePath:
        """The storage root (`pipelines.storage`): setting `storage`, else the state folder `home`.

        Raises:
            ConfigError: setting `storage` names a scheme fsspec does not know (or whose library is missing).
        """
        if not self.storage:
            return self.home
        try:
            root = storage_path(self.storage)
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"setting storage: cannot use {self.storage!r}: {exc}") from None
        return root if storage_is_remote(root) else root.resolve()

    @property
    def snapshot_root(self) -> StoragePath:
        return self.storage_root / "snapshots"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"


def _coerce(value: str, kind: typing.Any, name: str) -> typing.Any:
    """Turn an environment string into the field's type, or say which setting is wrong."""
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise InputError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        if kind is Secret:
            return Secret(value)
        return value
    except ValueError:
        shown = "***" if kind is Secret else repr(value)
        raise ConfigError(f"setting {name}: cannot read {shown} as {getattr(kind, '__name__', kind)}") from None


def _build(cls: type, toml: dict, env_prefix: str, path: str, sources: dict[str, str] | None = None) -> typing.Any:
    """`cls` from the file's `toml` table and the environment (`env_prefix`); `sources`, when given, gets where each
    setting's value came from: {"train.epochs": "environment NIGHTSHIFT_TRAIN_EPOCHS" | "file" | "default"}."""
    hints = typing.get_type_hints(cls)
    values: dict[str, typing.Any] = {}
    unknown = set(toml) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"nightshift.toml: unknown setting(s) {', '.join(sorted(path + k for k in unknown))}")
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        env_name = f"{env_prefix}{f.name.upper()}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            section = toml.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"nightshift.toml: [{path}{f.name}] must be a table")
            values[f.name] = _build(kind, section, f"{env_name}_", f"{path}{f.name}.", sources)
            continue
        source = "default"
        if env_name in os.environ:
            values[f.name] = _coerce(os.environ[env_name], kind, env_name)
            source = f"environment {env_name}"
        elif f.name in toml:
            raw = toml[f.name]
            values[f.name] = _coerce(str(raw), kind, f"{path}{f.name}") if not isinstance(raw, (int, float, bool)) or kind in (Path, Secret, str) else raw
            source = "file"
        if sources is not None:
            sources[f"{path}{f.name}"] = source
    return cls(**values)


# Settings that take one of a few words: checked when the settings load, so a typo stops every command at once with
# the allowed words, rather than whichever task reads it first.
CHOICES: dict[str, tuple[str, ...]] = {
    "train.device": ("auto", "cpu", "cuda"), "train.precision": ("auto", "bf16", "fp32"), "train.pooling": ("cls", "mean"), "score.shadow": ("fields", "index", "off"),
    "score.runtime": ("fp32", "int8"),
    "rca.pooling": ("cls", "mean"), "elasticsearch.unlabelled": ("keep", "drop"), "forecast.device": ("auto", "cpu", "cuda"),
    "rca.selection": ("templates", "time"),
    "inputs.format": INPUT_FORMATS, "inputs.epoch_unit": EPOCH_UNITS, "serve.short_history": ("refuse", "flag"),
}


def check_choices(settings: Settings) -> None:
    """Raises ConfigError naming the first setting of `CHOICES` whose value is not one of its words."""
    for name, allowed in CHOICES.items():
        section, _, field_name = name.partition(".")
        value = getattr(getattr(settings, section), field_name)
        if value not in allowed:
            raise ConfigError(f"setting {name}: {value!r} is not one of {', '.join(allowed)}")


# Settings that are gone, and the one that does their work now: an old name in the file or the environment stops every
# command with one line naming its replacement (a silently ignored old variable would run with the default instead).
REPLACED: dict[str, str] = {
    "retrain.train_days": "retrain.log_days",
    "forecast.cpu_threads": "train.cpu_threads",
    "candidates.baseline_tolerance": "promotion.baseline_tolerance",
    "validation.min_history_points": "forecast.lookback",
}


def env_name(key: str) -> str:
    """The environment variable of a dotted setting: `train.epochs` -> `NIGHTSHIFT_TRAIN_EPOCHS`."""
    return "NIGHTSHIFT_" + key.replace(".", "_").upper()


def check_replaced(toml: dict, path: Path) -> None:
    """Raises ConfigError naming the replacement when the file `toml` (read from `path`) or the environment sets a
    setting of `REPLACED`."""
    for old, new in REPLACED.items():
        *sections, name = old.split(".")
        table: typing.Any = toml
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict) and name in table:
            raise ConfigError(f"{path}: setting {old} is replaced by {new}")
        if env_name(old) in os.environ:
            raise ConfigError(f"environment variable {env_name(old)}: setting {old} is replaced by {new} ({env_name(new)})")


def settings_in_effect(settings: Settings, sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """Every setting as (dotted name, value as a person reads it, where it came from), in the order of the
    dataclasses; a secret that is set shows as `***`. `sources` is what `load_settings` filled."""
    rows: list[tuple[str, str, str]] = []

    def walk(obj: typing.Any, path: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{path}{f.name}.")
                continue
            # as the settings file spells it: TOML's true/false
            shown = ("***" if value else "") if isinstance(value, Secret) else str(value).lower() if isinstance(value, bool) else str(value)
            rows.append((f"{path}{f.name}", shown, sources.get(f"{path}{f.name}", "default")))

    walk(settings, "")
    return rows


def config_path(config_file: str | Path | None = None) -> Path:
    """The settings file: `config_file`, else `NIGHTSHIFT_CONFIG`, else `nightshift.toml` in the state
    folder (`NIGHTSHIFT_HOME`, default ~/.nightshift). Never the working directory: an Airflow task's
    working directory is not the deployment's."""
    if config_file or os.environ.get("NIGHTSHIFT_CONFIG"):
        return Path(config_file or os.environ["NIGHTSHIFT_CONFIG"])
    home = Path(os.environ["NIGHTSHIFT_HOME"]) if os.environ.get("NIGHTSHIFT_HOME") else Settings.home
    return home / "nightshift.toml"


def load_settings(config_file: str | Path | None = None, sources: dict[str, str] | None = None) -> Settings:
    """Read the settings: defaults < the file of `config_path` < `NIGHTSHIFT_*` variables. `sources`, when given,
    gets each setting's dotted name -> where its value came from ("default", "file", "environment NIGHTSHIFT_...").

    Raises:
        ConfigError: the named file is missing or malformed, or a setting is unknown or of the wrong type.
    """
    path = config_path(config_file)
    toml: dict = {}
    if path.is_file():
        try:
            toml = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif config_file or os.environ.get("NIGHTSHIFT_CONFIG"):
        raise ConfigError(f"NIGHTSHIFT_CONFIG: no such file {path}")
    check_replaced(toml, path)
    settings = _build(Settings, toml, "NIGHTSHIFT_", "", sources)
    if sources is not None:
        sources.update({k: f"file {path}" for k, v in sources.items() if v == "file"})
    check_choices(settings)
    return dataclasses.replace(settings, home=settings.home.resolve())
