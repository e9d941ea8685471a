"""Root causes the minute a job fails: Alertmanager's webhook, `POST /v1/alerts` of `nightshift serve`.

Reading order:
1. The request: Alertmanager's webhook message, version "4" (`AlertmanagerMessage`), as its receivers'
   `webhook_configs` post it, with the key in `Authorization: Bearer` (`http_config.authorization`).
2. `AlertResponder.answer`: each firing alert whose label `alerts.job_label` names a job is answered once. The job's
   documents (`fields.job_id` equal to the label's value) are read from Elasticsearch (`alerts.log_source`, else
   `retrain.log_source` when that is Elasticsearch); with none there, the alert's annotations
   (`alerts.text_annotations`) are the job's text. The failure-rca version `nightshift serve` is serving explains it
   (`pipelines.scoring.root_causes.RootCauseAnnotator`, the batch scoring's own), `ml.rca.*` is written back onto the job's
   documents through the scoring sink (`pipelines.sources.elastic.writer.ElasticsearchLogSink`), and the causes and
   actions are posted to `alerts.notify_url`.
3. `AnsweredJobs`: the job ids answered, so that a re-sent alert (Alertmanager repeats a firing group every
   `repeat_interval`, and retries a delivery that failed) is answered once; the `alerts.remember_jobs` most recent
   are kept, in this process's memory.

The answer says, per alert, what was done: `answered` (with the causes, the documents written, whether the
notification went out), `duplicate`, `skipped` (no job label, or no text to explain) or `ignored` (resolved).
A job that could not be answered (Elasticsearch unreachable) is `failed`, forgotten, and the answer is a 503, so that
Alertmanager delivers the message again; no failure-rca version to answer with is a 503 with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import closing
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import ConfigError, Settings
from pipelines.data.failed_jobs import job_text
from pipelines.data.records import format_timestamp, get_field, set_field
from pipelines.errors import NightshiftError
from pipelines.scoring.root_causes import RootCauseAnnotator
from pipelines.sources.elastic.reader import ElasticsearchLogSource
from pipelines.sources.elastic.writer import ElasticsearchLogSink
from pipelines.telemetry import get_logger
from serving.champions import FAILURE_RCA

log = get_logger("serve.alerts")

ES_SCHEMES = ("http://", "https://", "elasticsearch://")


# ---- 1. the request and the answer ---------------------------------------------------------------------------

class Alert(BaseModel):
    """One alert of the message (Alertmanager's fields; others are kept and ignored)."""

    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None


class AlertmanagerMessage(BaseModel):
    """Alertmanager's webhook body (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "version": "4", "groupKey": '{}:{alertname="KubeJobFailed"}', "truncatedAlerts": 0, "status": "firing", "receiver": "nightshift",
        "groupLabels": {"alertname": "KubeJobFailed"}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": "firing", "labels": {"alertname": "KubeJobFailed", "namespace": "ml", "job_name": "train-4242"},
                    "annotations": {"description": "Job ml/train-4242 failed: CUDA out of memory"},
                    "startsAt": "2026-12-07T02:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "5f1e0c4a8b2d7e93"}]}]})
    version: Literal["4"] = Field(description="the webhook message version; Alertmanager sends 4")
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    alerts: list[Alert]


class Cause(BaseModel):
    label: str
    score: float = Field(description="the model's probability, 0..1")


class JobAnswer(BaseModel):
    alert: str | None = Field(None, description="the alert's name (label alertname)")
    fingerprint: str | None = None
    job: str | None = Field(None, description="the job id, from the alert label setting alerts.job_label names")
    status: Literal["answered", "duplicate", "skipped", "ignored", "failed"]
    reason: str | None = Field(None, description="why the alert was not answered (duplicate, skipped, ignored, failed)")
    causes: list[Cause] = []
    actions: list[str] = []
    low_confidence: bool | None = Field(None, description="no cause passed its threshold: the actions come from the knowledge base")
    text_from: Literal["elasticsearch", "annotations"] | None = Field(None, description="where the job's text was read")
    documents: int | None = Field(None, description="the job's documents read from Elasticsearch")
    written: int | None = Field(None, description="of those, written back with ml.rca.*")
    notified: bool | None = Field(None, description="the notification was delivered (null: setting alerts.notify_url is empty)")
    notify_error: str | None = None


class AlertsResponse(BaseModel):
    model: str | None = Field(None, description="the failure-rca version that answered")
    version: str | None = None
    receiver: str
    jobs: list[JobAnswer]


# ---- 3. the jobs answered ------------------------------------------------------------------------------------

class AnsweredJobs:
    """Job ids being answered or answered, each with when (ISO-8601), the oldest forgotten beyond `size`."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.jobs: OrderedDict[str, str | None] = OrderedDict()  # job -> when answered; None while being answered

    def claim(self, job: str) -> str | None:
        """Take `job` (None) or say why it is taken already: 'answered at T' or 'being answered'."""
        if job in self.jobs:
            when = self.jobs[job]
            return f"answered at {when}" if when else "being answered"
        self.jobs[job] = None
        while len(self.jobs) > self.size:
            self.jobs.popitem(last=False)
        return None

    def done(self, job: str) -> None:
        self.jobs[job] = format_timestamp(datetime.now(timezone.utc).replace(microsecond=0))
        self.jobs.move_to_end(job)

    def release(self, job: str) -> None:
        self.jobs.pop(job, None)

    def __len__(self) -> int:
        return len(self.jobs)


# ---- 2. answering -----------------------------------------------------------------------------------------

def log_source_uri(settings: Settings) -> str | None:
    """The Elasticsearch URI the jobs' lines are read from: `alerts.log_source`, else `retrain.log_source` when it is
    Elasticsearch; None: the alerts' annotations alone.

    Raises:
        ConfigError: `alerts.log_source` is not an Elasticsearch URI.
    """
    configured = settings.alerts.log_source.strip()
    if configured:
        if not configured.startswith(ES_SCHEMES):
            raise ConfigError(f"setting alerts.log_source: {configured!r} is not Elasticsearch: use http(s)://host:port/INDEX-PATTERN "
                              "or elasticsearch://INDEX-PATTERN (empty: retrain.log_source, or the alerts' annotations alone)")
        return configured
    fallback = settings.retrain.log_source.strip()
    return fallback if fallback.startswith(ES_SCHEMES) else None


class AlertResponder:
    """What `POST /v1/alerts` does; one per server. `server` is `serving.state.Server` (champions, the worker thread)."""

    def __init__(self, server: Any, settings: Settings):
        """Raises:
            ConfigError: a setting of [alerts] cannot be used (the message names it).
        """
        cfg = settings.alerts
        self.server, self.settings = server, settings
        if not cfg.job_label.strip():
            raise ConfigError("setting alerts.job_label is empty: name the alert label that holds the failed job's id (e.g. job_name)")
        self.label = cfg.job_label.strip()
        self.annotations = [a.strip() for a in cfg.text_annotations.split(",") if a.strip()]
        if cfg.max_job_docs < 1:
            raise ConfigError(f"setting alerts.max_job_docs: must be at least 1, got {cfg.max_job_docs}")
        if cfg.notify_timeout <= 0:
            raise ConfigError(f"setting alerts.notify_timeout: must be more than 0 seconds, got {cfg.notify_timeout:g}")
        url = cfg.notify_url.reveal()
        if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
            raise ConfigError("setting alerts.notify_url: not an http(s):// URL")  # never shown: it may hold a token
        self.notify_url = url
        self.uri = log_source_uri(settings)
        self.source: Any = None
        self.sink: Any = None
        if self.uri is not None:
            self.source = ElasticsearchLogSource(self.uri, settings)  # connects on first use
            self.sink = ElasticsearchLogSink(self.uri, settings)
            self.sink.bind(self.source)  # ml.rca.* onto the job's own documents
        self.answered = AnsweredJobs(cfg.remember_jobs)

    def close(self) -> None:
        for end in (self.source, self.sink):
            if end is not None and "conn" in vars(end):  # opened: its client holds connections
                end.conn.close()

    async def answer(self, message: AlertmanagerMessage) -> tuple[int, AlertsResponse]:
        """(HTTP status, answer) for one webhook message: 200, or 503 when a job failed (Alertmanager retries it).

        Raises:
            NoChampion: a job needs answering and there is no failure-rca version to answer with (a 503 with the reason).
        """
        answers: list[JobAnswer] = []
        slot = None
        for alert in message.alerts:
            name, fingerprint = alert.labels.get("alertname"), alert.fingerprint
            if alert.status != "firing":
                answers.append(JobAnswer(alert=name, fingerprint=fingerprint, job=alert.labels.get(self.label), status="ignored",
                                         reason="resolved"))
                continue
            job = alert.labels.get(self.label, "").strip()
            if not job:
                answers.append(JobAnswer(alert=name, fingerprint=fingerprint, status="skipped",
                                         reason=f"no label '{self.label}' naming the failed job (setting alerts.job_label)"))
                continue
            taken = self.answered.claim(job)
            if taken:
                answers.append(JobAnswer(alert=name, fingerprint=fingerprint, job=job, status="duplicate", reason=taken))
                continue
            if slot is None:  # one version answers the whole message
                try:
                    slot = self.server.champions.get(FAILURE_RCA)
                except BaseException:  # none: NoChampion, a 503 from the server's handler (Alertmanager retries)
                    self.answered.release(job)
                    raise
            try:
                done = await self.explain(job, alert, slot)
            except NightshiftError as exc:
                self.answered.release(job)
                log.error("alert not answered", extra={"job": job, "alert": name, "error": str(exc)})
                answers.append(JobAnswer(alert=name, fingerprint=fingerprint, job=job, status="failed", reason=str(exc)))
                continue
            except BaseException:
                self.answered.release(job)
                raise
            if done.status == "answered":
                self.answered.done(job)
            else:
                self.answered.release(job)  # nothing to explain yet: a later alert may find the job's lines
            answers.append(done.model_copy(update={"alert": name, "fingerprint": fingerprint}))
        status = 503 if any(a.status == "failed" for a in answers) else 200
        return status, AlertsResponse(model=slot.name if slot else None, version=slot.version if slot else None,
                                      receiver=message.receiver, jobs=answers)

    def alert_text(self, alert: Alert) -> str:
        """The alert's own account of the failure: its `alerts.text_annotations`, one per line."""
        texts = [alert.annotations.get(a, "").strip() for a in self.annotations]
        return "\n".join(dict.fromkeys(t for t in texts if t))

    async def explain(self, job: str, alert: Alert, slot) -> JobAnswer:
        """Read, explain, write back and notify one job.

        Raises:
            ElasticsearchError: the log source cannot be read or written.
        """
        fields = self.settings.fields
        docs = await asyncio.to_thread(self.job_docs, job) if self.source is not None else []
        text_from: Literal["elasticsearch", "annotations"] = "elasticsearch"
        if not job_text((get_field(d, fields.level), get_field(d, fields.message)) for _, d in docs):
            text = self.alert_text(alert)
            if not text:
                where = f"no lines of it in {self.uri} (field {fields.job_id})" if self.uri else "no Elasticsearch log source (setting alerts.log_source)"
                return JobAnswer(job=job, status="skipped", documents=len(docs),
                                 reason=f"nothing to explain the job with: {where}, and no annotation "
                                        f"{' / '.join(self.annotations) or '(setting alerts.text_annotations is empty)'} on the alert")
            from_alert: dict = {}
            set_field(from_alert, fields.message, text)
            set_field(from_alert, fields.job_id, job)
            window, text_from = [("alert", from_alert)], "annotations"
        else:
            window = docs
        annotator = RootCauseAnnotator(slot.model, slot.name, slot.version, self.settings)
        await self.server.run(annotator.annotate, window, {job})
        first = window[0][1]
        answer = JobAnswer(job=job, status="answered", text_from=text_from, documents=len(docs),
                           causes=[Cause(label=label, score=round(float(get_field(first, "ml.rca.scores", {}).get(label, 0.0)), 4))
                                   for label in get_field(first, "ml.rca.labels", [])],
                           actions=list(get_field(first, "ml.rca.actions", [])),
                           low_confidence=bool(get_field(first, "ml.rca.low_confidence", False)))
        if docs:
            result = await asyncio.to_thread(self.sink.write, iter(docs))
            answer.written = result["written"]
            if result["failed"]:
                log.warning("root causes not written to every document of the job",
                            extra={"job": job, "failed": result["failed"], "reasons": result["failed_reasons"]})
        if self.notify_url is not None:
            answer.notify_error = await asyncio.to_thread(self.notify, answer, alert, slot, get_field(first, "ml.rca.kb.id"))
            answer.notified = answer.notify_error is None
        log.info("alert answered", extra={"job": job, "causes": [c.label for c in answer.causes], "text_from": text_from,
                                          "documents": len(docs), "written": answer.written, "notified": answer.notified})
        return answer

    def job_docs(self, job: str) -> list[tuple[Any, dict]]:
        """The job's documents, oldest first, at most `alerts.max_job_docs`.

        Raises:
            ElasticsearchError: the index cannot be read.
        """
        field_name = self.settings.fields.job_id
        # The job id field is a keyword in nightshift's index template; an index mapped dynamically holds it as text
        # with a `.keyword` sub-field, where a term on the text field itself matches nothing.
        match = {"bool": {"should": [{"term": {field_name: job}}, {"term": {f"{field_name}.keyword": job}}], "minimum_should_match": 1}}
        limit = self.settings.alerts.max_job_docs
        with closing(self.source.iter_matching([match])) as found:
            docs = list(islice(found, limit + 1))
        if len(docs) > limit:
            log.warning("job has more documents than alerts.max_job_docs: the oldest are explained and written",
                        extra={"job": job, "max_job_docs": limit})
        return docs[:limit]

    def notify(self, answer: JobAnswer, alert: Alert, slot, kb_id: str | None) -> str | None:
        """Post the job's causes and actions to `alerts.notify_url`; None when delivered, else why not (logged in one
        line, never with the URL's path, which may hold a token)."""
        import requests

        body = notification(answer, alert, slot, kb_id)
        host = urlsplit(self.notify_url or "").hostname
        started = time.perf_counter()
        try:
            r = requests.post(self.notify_url or "", json=body, timeout=self.settings.alerts.notify_timeout)
            if r.status_code >= 300:
                error = f"{host} answered HTTP {r.status_code}"
            else:
                return None
        except requests.RequestException as exc:
            error = f"{host}: {exc.__class__.__name__}"
        log.warning(f"notification not delivered: {error}", extra={"job": answer.job, "seconds": round(time.perf_counter() - started, 3)})
        return error


def notification(answer: JobAnswer, alert: Alert, slot, kb_id: str | None) -> dict[str, Any]:
    """The JSON posted for one answered job: the causes, actions and where they came from, and `text`, the same in
    Slack's mrkdwn (what Slack, Mattermost and most chat webhooks show)."""
    causes = ", ".join(f"{c.label} ({c.score:.2f})" for c in answer.causes)
    if causes:
        headline = f"*Failed job `{answer.job}`*: root cause {causes}"
    else:
        nearest = f"; nearest known failure: {kb_id}" if kb_id else ""
        headline = f"*Failed job `{answer.job}`*: no root cause passed its threshold{nearest}"
    lines = [headline]
    if answer.actions:
        lines += ["Suggested actions:", *(f"• {a}" for a in answer.actions)]
    origin = (f"{answer.documents} log line(s)" if answer.text_from == "elasticsearch" else "the alert's annotations")
    lines.append(f"_{slot.name} v{slot.version}, from {origin}; alert {alert.labels.get('alertname', '?')}_")
    return {"text": "\n".join(lines), "job": answer.job, "causes": [c.model_dump() for c in answer.causes], "actions": answer.actions,
            "low_confidence": answer.low_confidence, "kb_match": kb_id, "text_from": answer.text_from, "documents": answer.documents,
            "written": answer.written, "model": {"name": slot.name, "version": slot.version},
            "alert": {"name": alert.labels.get("alertname"), "fingerprint": alert.fingerprint, "startsAt": alert.startsAt,
                      "labels": alert.labels, "generatorURL": alert.generatorURL}}
