"""Promotion: the champion/challenger gate, champion decay, rollback, and the compare-and-set that
moves the `champion` alias.

The gate judges the challenger and the champion on the same fresh holdout snapshot, which neither
trained on. The challenger becomes champion only when it beats the champion's primary metric by
`promotion.margin`, no guard metric regresses by more than its tolerance (`promotion.guard_tolerance`,
or its own in `promotion.guard_tolerances`), its data
validation passed, and its training data did not drift severely together with a label shift
(which points at a labelling fault rather than a changed world). A task with `gate_baselines` (both logs
models: the TF-IDF baseline retrained on the challenger's own training snapshot) also makes the challenger face
that baseline on the holdout: it may trail it on the primary metric by at most `promotion.baseline_tolerance`
(`face_baseline`). The decision records every contender's holdout metrics (challenger, each baseline,
champion). The decision and its reasons go
into the version's tags, its run (`promotion/decision.json`, `holdout_*` metrics, the holdout as a
dataset input) and its page (the version's description: `pipelines.registry.version_page`); once
the gate has decided, the version loses the alias `challenger` ("waiting for the gate"). The replaced
champion keeps the alias `previous`, so `rollback` can restore it. A first version becomes champion
unopposed, and is judged on the fresh holdout all the same (`judge_first_version`).

The gate also measures the champion's decay on the holdout (`champion_decay`). A decayed champion that the
night's challenger does not replace is rolled back to `previous` when `previous` beats it on the same holdout
(`roll_back_decayed`, setting `promotion.auto_rollback`), through the same locked compare-and-set as
`nightshift rollback` (`rollback`).

Moving `champion` is a compare-and-set: under a lock, the current champion is re-read and the
alias moves only when it is still the version the challenger was judged against. The lock is a
file lock beside a local SQLite store, and for a remote tracking server a registered model created
as a mutex with an owner token (the registry refuses a second one with the same name, atomically);
see `promotion_lock` for how a holder releases it and how a waiter breaks an abandoned one. A gate
that loses writes its decision under the lock too, and never onto a version another gate promoted.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from pipelines.config import ConfigError, PromotionSettings, Settings
from pipelines.data.drift import check_drift
from pipelines.data.snapshots import Snapshot, load_snapshot, parse_window_tag, window_tag
from pipelines.errors import NightshiftError, PromotionError
from pipelines.registry.aliases import FIRST_VERSION, compare_and_set_champion, promotion_lock, retire_challenger
from pipelines.registry.store import (
    ABANDONED,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ModelRef,
    RegistryError,
    alias_version,
    log_snapshot_input,
    resolve,
    set_version_tags,
    use_store,
)
from pipelines.registry.version_page import add_to_version_page, write_version_page
from pipelines.tasks import evaluate, task
from pipelines.tasks.spec import METRIC_ROLES, EvaluationReport, TaskSpec, finite
from pipelines.telemetry import get_logger

log = get_logger("promotion")

PROMOTED, REJECTED, STALE, KEPT, ROLLED_BACK = "promoted", "rejected", "stale", "kept", "rolled_back"
RESTORED = "restored"  # a version page's headline after a rollback made it champion again (not a `promotion.decision`)
# `rollback.trigger` of a rolled-back version: by hand (`nightshift rollback`), or by the gate on decay (`roll_back_decayed`)
MANUAL, DECAY = "manual", "decay"
DECAYED_METRIC = "decayed"  # run metric: 1 when the version was decayed as champion on the window of that step, else 0
BASELINE_TITLES = {"tfidf": "TF-IDF", "reference": "ten-line reference"}  # how a reason names an evaluation baseline


def holdout_metrics(model_ref: str, holdout: Path, settings: Settings) -> dict[str, float]:
    """The finite metrics of one version on the holdout, through its task's evaluate (no baselines)."""
    return finite(evaluate(model_ref, holdout, settings, baseline=False).metrics)


def validation_allows(status: str, cfg: PromotionSettings) -> tuple[bool, str]:
    """Whether the challenger's `validation.status` lets it be promoted, and why."""
    if status == "passed":
        return True, "validation passed"
    if status == "not_run":
        return cfg.allow_not_run, f"validation not run ({'allowed' if cfg.allow_not_run else 'refused'} by setting promotion.allow_not_run)"
    if status == "warn":
        return cfg.allow_warn, f"validation warned ({'allowed' if cfg.allow_warn else 'refused'} by setting promotion.allow_warn)"
    return False, f"validation.status is {status!r}"


def guard_tolerances(cfg: PromotionSettings) -> dict[str, float]:
    """`promotion.guard_tolerances` ("smape=2.0,recall=0.02") as {metric: tolerance}."""
    out = {}
    for item in filter(None, (i.strip() for i in cfg.guard_tolerances.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"setting promotion.guard_tolerances: cannot read {item!r} as metric=tolerance") from None
        if out[name.strip()] < 0:
            raise ConfigError(f"setting promotion.guard_tolerances: {item!r} must be >= 0")
    return out


def beats_on_primary(spec: TaskSpec, mine: dict[str, float], theirs: dict[str, float], margin: float,
                     who: str = "challenger", whom: str = "champion") -> tuple[bool, str]:
    """Whether `mine` beats `theirs` on `spec.primary` by at least `margin` (in the metric's direction), and why;
    `who` and `whom` name the two sides in the reason. An undefined value on either side never beats."""
    p, c, k = spec.primary, mine.get(spec.primary, math.nan), theirs.get(spec.primary, math.nan)
    if not (math.isfinite(c) and math.isfinite(k)):
        return False, f"primary metric {p} is undefined on the holdout ({who} {c}, {whom} {k})"
    gain = spec.gain(p, c, k)
    beats = gain > 0 and gain >= margin
    return beats, (f"{p} {c:.4f} vs {whom} {k:.4f}: {'beats' if beats else 'does not beat'} it by the margin {margin} "
                   f"({'+' if gain >= 0 else ''}{gain:.4f})")


def decide(spec: TaskSpec, challenger: dict[str, float], champion: dict[str, float], validation: str,
           drift: dict, cfg: PromotionSettings) -> tuple[bool, list[str]]:
    """The gate's verdict and its reasons, from holdout metrics, validation status and drift."""
    tolerances = guard_tolerances(cfg)
    ok, why = beats_on_primary(spec, challenger, champion, cfg.margin)
    reasons = [why]
    for g in spec.guards:
        c, k = challenger.get(g, math.nan), champion.get(g, math.nan)
        if not (math.isfinite(c) and math.isfinite(k)):
            reasons.append(f"guard {g} not comparable on the holdout (challenger {c}, champion {k})")
            continue
        loss, tolerance = -spec.gain(g, c, k), tolerances.get(g, cfg.guard_tolerance)
        if loss > tolerance:
            ok = False
            reasons.append(f"guard {g} regressed {c:.4f} vs {k:.4f} (-{loss:.4f} > tolerance {tolerance})")
        else:
            reasons.append(f"guard {g} {c:.4f} vs {k:.4f}: within tolerance {tolerance}")
    allowed, why = validation_allows(validation, cfg)
    ok &= allowed
    reasons.append(why)
    status, shift = drift.get("status", "not_run"), bool(drift.get("label_shift"))
    if status == "severe" and shift:
        ok = False
        reasons.append("drift severe together with a label shift: suspected labelling fault")
    else:
        reasons.append(f"drift {status}{' with a label shift' if shift else ''}")
    return ok, reasons


def face_baseline(spec: TaskSpec, challenger: dict[str, float], report: EvaluationReport, tolerance: float) -> dict[str, Any]:
    """The gate's second test, beside the champion: on the holdout the challenger must not trail any of its task's
    `gate_baselines` by more than `tolerance` (`promotion.baseline_tolerance`) on `spec.primary` (in the metric's
    direction, `spec.gain`). For both logs models one is the TF-IDF family trained and tuned on the challenger's own
    training snapshot as the night trains it; log-anomaly also faces the fixed ten-line reference recipe, which no
    choice of the night's can make the candidate itself.

    Args:
        spec: the challenger's task. challenger: its finite holdout metrics. report: its holdout evaluation, run with
            baselines (`report.baselines`, `report.baseline_trained_on`). tolerance: how far it may trail (>= 0).

    Returns {"ok", "reason", "contenders": {"challenger": metrics, each baseline of `report`: its finite metrics},
    "baseline_trained_on": the baselines' training snapshot or None}. A baseline counts as passed, with the reason,
    when the challenger's primary metric or the baseline's is undefined on the holdout (not comparable: a failure-rca
    holdout without failed jobs), and when it was not run because the challenger's training snapshot is gone.
    """
    p = spec.primary
    out: dict[str, Any] = {"ok": True, "contenders": {"challenger": dict(challenger), **{b: finite(m) for b, m in report.baselines.items()}},
                           "baseline_trained_on": report.baseline_trained_on}
    if not spec.gate_baselines:
        return {**out, "reason": f"no baseline test for {spec.name}"}
    c = challenger.get(p, math.nan)
    trained = " (same training snapshot)" if report.baseline_trained_on else ""

    def face(name: str) -> tuple[bool, str]:
        title = BASELINE_TITLES.get(name, name)
        if name not in report.baselines:
            if not math.isfinite(c):  # nothing on the holdout to score the baseline on either
                return True, f"{title} baseline {p} not comparable on the holdout (challenger {c}, {name} not run)"
            return True, f"{title} baseline not run: the challenger's training snapshot is gone"
        b = report.baselines[name].get(p, math.nan)
        if not (math.isfinite(c) and math.isfinite(b)):
            return True, f"{title} baseline {p} not comparable on the holdout (challenger {c}, {name} {b})"
        gain = spec.gain(p, c, b)
        ok = gain >= -tolerance
        verdict = (f"ahead of it by {gain:.4f}" if gain > 0 else "within the tolerance" if ok else "trails it by more than the tolerance")
        return ok, f"{p} {c:.4f} vs {title} baseline {b:.4f}{trained}: {verdict}{'' if gain > 0 else f' {tolerance}'}"

    verdicts = [face(name) for name in spec.gate_baselines]
    return {**out, "ok": all(ok for ok, _ in verdicts), "reason": "; ".join(reason for _, reason in verdicts)}


def champion_decay(client, champion: ModelRef, fresh: dict[str, float], spec: TaskSpec, cfg: PromotionSettings) -> dict:
    """The champion on the new window against its own recorded validation metrics (`best_*` of its run)."""
    run_id = client.get_model_version(champion.name, champion.version).run_id
    recorded = client.get_run(run_id).data.metrics if run_id else {}
    drops = {m: round(-spec.gain(m, fresh[m], recorded[f"best_{m}"]), 4)
             for m in (spec.primary, *spec.guards) if f"best_{m}" in recorded and math.isfinite(fresh.get(m, math.nan))}
    if spec.primary not in drops:
        return {"status": "unknown", "reason": f"no recorded best_{spec.primary} or no fresh value", "drops": drops}
    decayed = drops[spec.primary] > cfg.decay_tolerance
    return {"status": "decayed" if decayed else "ok", "drops": drops,
            "reason": f"{spec.primary} {fresh[spec.primary]:.4f} on the fresh window vs {recorded[f'best_{spec.primary}']:.4f} "
                      f"at validation (drop {drops[spec.primary]:+.4f}, tolerance {cfg.decay_tolerance})"}


# ---- the gate --------------------------------------------------------------------------------

def choose_holdout(client, spec: TaskSpec, refs: list[ModelRef], settings: Settings, holdout: str | Path | None) -> Snapshot:
    """The given holdout, checked to be disjoint from every training window in `refs`; otherwise the
    newest snapshot under `<snapshots>/<holdout_dataset>/` that starts after all of them end."""
    trained = {}
    for ref in refs:
        tags = client.get_model_version(ref.name, ref.version).tags
        trained[ref.version] = (parse_window_tag(tags.get("data.window")), tags.get("data.snapshot_hash"))
    ends = [w[1] for w, _ in trained.values() if w]

    def closed(snapshot: Snapshot) -> tuple[datetime, datetime] | None:
        start, end = snapshot.window
        return (start, end) if start and end else None

    def disjoint(snapshot: Snapshot) -> str | None:
        window = closed(snapshot)
        for version, (w, digest) in trained.items():
            if digest and digest == snapshot.content_hash:
                return f"v{version} trained on this very snapshot"
            if w and window and window[0] < w[1] and w[0] < window[1]:
                return f"its window {window_tag(snapshot.window)} overlaps v{version}'s training window {w[0].isoformat()}/{w[1].isoformat()}"
        return None

    if holdout is not None:
        snapshot = load_snapshot(holdout)
        if problem := disjoint(snapshot):
            raise PromotionError(f"holdout {snapshot.path}: {problem}; the gate needs data neither version trained on")
        return snapshot
    root = settings.snapshot_root / spec.holdout_dataset
    candidates = []
    for manifest in root.glob("*/manifest.json"):
        snapshot = load_snapshot(manifest.parent)
        window = closed(snapshot)
        if window and all(window[0] >= end for end in ends) and disjoint(snapshot) is None:
            candidates.append((window[0], snapshot))
    if not candidates:
        raise PromotionError(f"no fresh holdout under {root} that starts after the training windows; pass --holdout SNAPSHOT_DIR")
    return max(candidates, key=lambda c: c[0])[1]


def current_user() -> str:
    return os.environ.get("NIGHTSHIFT_USER") or getpass.getuser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _log_record(client, ref: ModelRef, record: dict, metrics: dict[str, float], holdout: Snapshot | None = None) -> None:
    """The decision as `promotion/decision.json`, run tags, holdout metrics and the holdout as a dataset input
    (context `holdout`) on the version's run."""
    from mlflow.entities import Metric

    run_id = client.get_model_version(ref.name, ref.version).run_id
    if not run_id:
        return
    if holdout is not None:
        log_snapshot_input(client, run_id, holdout, "holdout")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "decision.json").write_text(json.dumps(record, indent=2, default=str))
        client.log_artifacts(run_id, tmp, "promotion")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)])
    client.set_tag(run_id, "promotion.decision", record["decision"])
    client.set_tag(run_id, "promotion.reason", record["reason"][:4000])


def _drift_for(client, challenger: ModelRef, champion: ModelRef, settings: Settings) -> dict:
    """The challenger's drift against this champion: reused from its tags (and its run's `drift_*` metrics) when
    already checked, else run now. `scores`: {check: statistic}, e.g. {"message_template": 0.41}."""
    mv = client.get_model_version(challenger.name, challenger.version)
    if mv.tags.get("drift.reference_version") == champion.version and mv.tags.get("drift.status", "not_run") != "not_run":
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        scores = {k.removeprefix("drift_"): v for k, v in metrics.items() if k.startswith("drift_")}
        return {"status": mv.tags["drift.status"], "label_shift": mv.tags.get("drift.label_shift") == "true", "reused": True,
                "scores": finite(scores)}
    report = check_drift(client, challenger, settings, champion)
    scores = {c["name"].replace(".", "_"): float(c["value"]) for c in report["checks"]}
    return {"status": report["status"], "label_shift": report["label_shift"], "reason": report.get("reason"), "scores": finite(scores)}


def promote(name: str, settings: Settings, holdout: str | Path | None = None, version: str | None = None,
            before_commit: Callable[[], None] | None = None) -> dict:
    """Run the gate for `name`'s challenger (or `version`) against its champion; move `champion`
    by compare-and-set when it passes. Returns the decision record (also in tags, on the run and on the
    version page): `decision` promoted|rejected|stale|kept, `reasons` (one line each), `contenders`
    ({challenger, each baseline, champion: {metric: value}} on the holdout; the task's `gate_baselines` are the second
    test, `face_baseline`), `champion_now`. With no champion
    yet the version becomes champion unopposed and is judged on the holdout for the record
    (`judge_first_version`). The version loses `challenger` once promoted or rejected.

    The champion is also measured against its own validation score (`champion_decay`, the record's
    `champion_decay`). When it decayed, the record's `rollback` says what became of it (None when it did not):
    the challenger is judged first, and a promoted challenger replaces the decayed champion, so nothing is rolled
    back (`not_needed`); a stale or kept gate leaves the champion to the gate that moved it (`not_considered`);
    only a rejected challenger leaves the decayed champion in place, and then `roll_back_decayed` restores
    `previous` if it beats the champion on this same holdout (`rolled_back`; else `refused`, `off` or `lost`).
    A rejected challenger never beats the restored version on the primary metric: it did not beat the champion
    by the margin, which the restored version did (or it was refused on other grounds). The rollback happens
    before the challenger's record is written, so its `champion_now` and its page name the restored champion.

    Raises:
        ConfigError: a `promotion.*` setting is out of range. RegistryError: no challenger (or `version`).
        PromotionError: the holdout overlaps a training window or none is found, or the lock is not had in time.
        TrainingDataError: the holdout cannot judge the versions (no labelled line, no whole window).
    """
    cfg = settings.promotion
    for setting in ("margin", "guard_tolerance", "baseline_tolerance", "decay_tolerance", "rollback_quiet_days"):
        if getattr(cfg, setting) < 0:
            raise ConfigError(f"setting promotion.{setting} must be >= 0 (is {getattr(cfg, setting)})")
    guard_tolerances(cfg)  # a malformed setting fails before any evaluation runs
    client = use_store(settings)
    spec = task(name)
    if version is None and alias_version(client, name, CHALLENGER) is None:
        raise RegistryError(f"model {name!r}: no version waits for the gate (alias '{CHALLENGER}' is set on a new candidate and "
                            "removed once the gate decides); pass --version N to judge a version again")
    challenger = resolve(client, f"{name}/{version}" if version else f"{name}@{CHALLENGER}")
    champion_version = alias_version(client, name, CHAMPION)
    user, at = current_user(), _now()
    base = {"model": name, "challenger": challenger.version, "champion": champion_version, "by": user, "at": at}

    if champion_version is None:
        moved, now = compare_and_set_champion(
            client, name, None, challenger.version, timeout=cfg.lock_timeout, lease=cfg.lock_lease,
            on_commit=lambda: set_version_tags(client, challenger, {"promotion.decision": PROMOTED, "promotion.reason": FIRST_VERSION}))
        if moved:
            return _judge_first(client, spec, challenger, settings, holdout, base)
        assert now is not None  # not moved: the champion is no longer None
        champion_version = base["champion"] = now  # another first version won the race
    if champion_version == challenger.version:
        _retire(client, challenger, cfg)
        return {**base, "decision": KEPT, "reason": f"v{challenger.version} already is the champion", "champion_now": champion_version}

    champion = ModelRef(name, champion_version)
    tags = client.get_model_version(name, challenger.version).tags
    if tags.get("promotion.decision") == ABANDONED:  # its training task died before deciding; a retry registered another
        reason = f"v{challenger.version} was abandoned: {tags.get('promotion.reason', 'its training task died')}"
        _retire(client, challenger, cfg)
        return {**base, "decision": REJECTED, "reason": reason, "reasons": [reason], "champion_now": champion_version}
    if "rollback.at" in tags:  # refused without touching its tags: they keep saying who rolled it back and why
        reason = (f"v{challenger.version} was rolled back at {tags['rollback.at']} by {tags.get('rollback.by')}: "
                  f"{tags.get('rollback.reason')}; train a new candidate")
        _retire(client, challenger, cfg)
        return {**base, "decision": REJECTED, "reason": reason, "reasons": [reason], "champion_now": champion_version}

    snapshot = choose_holdout(client, spec, [challenger, champion], settings, holdout)
    drift = _drift_for(client, challenger, champion, settings)
    validation = tags.get("validation.status", "not_run")
    # The challenger with its task's baselines (the record's table, and the gate's second test), the champion alone.
    judged = evaluate(f"{name}/{challenger.version}", snapshot.path, settings, baseline=True)
    challenger_metrics = finite(judged.metrics)
    champion_metrics = holdout_metrics(f"{name}/{champion.version}", snapshot.path, settings)
    decay = champion_decay(client, champion, champion_metrics, spec, cfg)
    ok, reasons = decide(spec, challenger_metrics, champion_metrics, validation, drift, cfg)
    versus = face_baseline(spec, challenger_metrics, judged, cfg.baseline_tolerance)
    ok &= versus["ok"]
    reasons.append(versus["reason"])
    record = {**base, **spec.metric_roles(), "holdout": _holdout_entry(snapshot),
              "challenger_metrics": challenger_metrics, "champion_metrics": champion_metrics,
              "contenders": {**versus["contenders"], "champion": champion_metrics},
              "gate_baselines": list(spec.gate_baselines), "baseline_trained_on": versus["baseline_trained_on"],
              "validation": validation, "drift": drift, "champion_decay": decay, "rollback": None,
              "settings": {"margin": cfg.margin, "guard_tolerance": cfg.guard_tolerance, "baseline_tolerance": cfg.baseline_tolerance}}
    _record_decay(client, champion, champion_metrics, decay, snapshot)
    decayed = decay["status"] == "decayed"

    decision = PROMOTED if ok else REJECTED
    now = champion_version
    if ok:
        if before_commit:
            before_commit()
        if decayed:
            record["rollback"] = _rollback_entry("not_needed", champion_version, None,
                                                 f"champion v{champion_version} decayed; v{challenger.version} replaces it tonight")
        record.update(decision=PROMOTED, reasons=reasons, reason="; ".join(reasons), champion_now=challenger.version)
        moved, now = compare_and_set_champion(
            client, name, champion_version, challenger.version, timeout=cfg.lock_timeout, lease=cfg.lock_lease,
            on_commit=lambda: _record(client, challenger, record, snapshot))
        if not moved:
            decision = STALE
            reasons.append(f"compare-and-set lost: champion moved from v{champion_version} to v{now} while the gate ran; "
                           "run the gate again against the new champion")
            if decayed:
                record["rollback"] = _rollback_entry("not_considered", champion_version, None,
                                                     f"champion v{champion_version} decayed, but it moved to v{now} while the gate ran")
    elif decayed:
        record["rollback"] = roll_back_decayed(client, spec, champion, champion_metrics, decay, snapshot, settings, user)
    if decision != PROMOTED:
        record.update(decision=decision, reasons=reasons, reason="; ".join(reasons))
        # Under the lock too: a gate that lost must not overwrite the record of one that promoted this very version.
        with promotion_lock(client, name, cfg.lock_timeout, cfg.lock_lease) as held:
            now = alias_version(client, name, CHAMPION)
            if now == challenger.version:
                decision = KEPT
                record.update(decision=KEPT, reason=f"v{challenger.version} was promoted by another gate while this one ran; its record stands")
            else:
                held.check()
                record["champion_now"] = now
                _record(client, challenger, record, snapshot)
    log.info("gate decided", extra={"model": name, "challenger": challenger.version, "champion": champion_version,
                                    "decision": decision, "champion_now": now,
                                    "rollback": (record["rollback"] or {}).get("status")})
    return {**record, "champion_now": now}


def _holdout_entry(snapshot: Snapshot) -> dict[str, str]:
    return {"snapshot": str(snapshot.path), "content_hash": snapshot.content_hash, "window": window_tag(snapshot.window)}


def holdout_run_metrics(record: dict) -> dict[str, float]:
    """The record's holdout numbers as run metrics: the version's `holdout_<metric>`, the champion's
    `holdout_champion_<metric>`, each baseline's `holdout_baseline_<name>_<metric>` (finite values only)."""
    out = {f"holdout_{k}": v for k, v in finite(record.get("challenger_metrics") or {}).items()}
    out.update({f"holdout_champion_{k}": v for k, v in finite(record.get("champion_metrics") or {}).items()})
    for name, metrics in (record.get("contenders") or {}).items():
        if name not in ("challenger", "champion"):
            out.update({f"holdout_baseline_{name}_{k}": v for k, v in finite(metrics).items()})
    return out


def _retire(client, ref: ModelRef, cfg: PromotionSettings) -> None:
    """The gate decided on `ref`: `challenger` no longer points at it (under the lock, `retire_challenger`)."""
    with promotion_lock(client, ref.name, cfg.lock_timeout, cfg.lock_lease) as held:
        held.check()
        retire_challenger(client, ref)


def _record(client, ref: ModelRef, record: dict, holdout: Snapshot | None) -> None:
    """Under the promotion lock: the decision's tags on the version; `challenger` removed from it once decided
    (promoted or rejected; a stale version waits for the gate again); the record, holdout metrics and holdout input
    on its run (`_log_record`); and its page (`write_version_page`)."""
    tags = {"promotion.decision": record["decision"], "promotion.reason": record["reason"][:4000],
            "promotion.by": record["by"], "promotion.at": record["at"]}
    if record.get("champion"):
        tags["promotion.against"] = record["champion"]
        if record["decision"] == PROMOTED:
            tags["promotion.replaced"] = record["champion"]
    if record.get("holdout"):
        tags["promotion.holdout_hash"] = record["holdout"]["content_hash"]
    set_version_tags(client, ref, tags)
    if record["decision"] in (PROMOTED, REJECTED):
        retire_challenger(client, ref)
    _log_record(client, ref, record, holdout_run_metrics(record), holdout)
    write_version_page(client, ref, record)


def judge_first_version(name: str, version: str, settings: Settings, holdout: str | Path | None = None) -> dict:
    """Judge version `version` of `name`, made champion unopposed as the first version (`mark_challenger`), on the
    fresh holdout all the same, so that its run and page say how it does on data it never saw.

    The holdout is `holdout` or the newest one after its training window (`choose_holdout`). Its metrics and its
    baselines' (the task's `evaluate`) go on its run (`holdout_*`, `holdout_baseline_*`, the holdout as a dataset
    input, `promotion/decision.json`), the tags `promotion.by`, `.at` and `.holdout_hash` on the version, and the
    version page is written. A holdout that cannot judge it (none found, overlapping its training window, no
    labelled line) is said in the record and on the page; the promotion stands either way.
    Returns the decision record (decision `promoted`; `champion_now`: the champion now).

    Raises:
        RegistryError: `name`/`version` is not registered. StoreUnreachable: the registry did not answer.
    """
    client = use_store(settings)
    ref = resolve(client, f"{name}/{version}")
    base = {"model": name, "challenger": ref.version, "champion": None, "by": current_user(), "at": _now()}
    return _judge_first(client, task(name), ref, settings, holdout, base)


def _judge_first(client, spec: TaskSpec, ref: ModelRef, settings: Settings, holdout: str | Path | None, base: dict) -> dict:
    cfg = settings.promotion
    tags = client.get_model_version(ref.name, ref.version).tags
    record: dict[str, Any] = {**base, "decision": PROMOTED, "reason": FIRST_VERSION, **spec.metric_roles(), "holdout": None, "challenger_metrics": {},
                              "champion_metrics": {}, "contenders": {}, "validation": tags.get("validation.status", "not_run"),
                              "drift": {"status": "not_run", "reason": "no champion to compare with"}}
    reasons = [FIRST_VERSION]
    snapshot = None
    try:
        snapshot = choose_holdout(client, spec, [ref], settings, holdout)
        report = evaluate(f"{ref.name}/{ref.version}", snapshot.path, settings)
    except NightshiftError as exc:  # the promotion stands; the page says why there are no holdout numbers
        reasons.append(f"not judged on a fresh holdout: {exc}")
        log.warning("first version not judged on a holdout", extra={"model": ref.name, "version": ref.version, "reason": str(exc)})
        snapshot = None
    else:
        metrics = finite(report.metrics)
        baselines = {b: finite(m) for b, m in report.baselines.items()}
        record.update(holdout=_holdout_entry(snapshot), challenger_metrics=metrics, contenders={"challenger": metrics, **baselines})
        reasons.append(f"judged on the fresh holdout for the record ({report.examples} {report.unit}): a first version faces no gate")
        mine = metrics.get(spec.primary, math.nan)
        for b, values in sorted(baselines.items()):
            theirs = values.get(spec.primary, math.nan)
            if math.isfinite(mine) and math.isfinite(theirs):
                gain = spec.gain(spec.primary, mine, theirs)
                verdict = f"ahead of it by {gain:.4f}" if gain > 0 else "level with it" if gain == 0 else f"behind it by {-gain:.4f}"
                reasons.append(f"{spec.primary} {mine:.4f} vs {BASELINE_TITLES.get(b, b)} baseline {theirs:.4f}: {verdict}")
        if report.note:
            reasons.append(report.note)
    record["reasons"] = reasons
    with promotion_lock(client, ref.name, cfg.lock_timeout, cfg.lock_lease) as held:
        now = alias_version(client, ref.name, CHAMPION)
        held.check()
        record["champion_now"] = now
        _record(client, ref, record, snapshot)
    log.info("first version judged", extra={"model": ref.name, "version": ref.version, "holdout": (record["holdout"] or {}).get("snapshot")})
    return record


def _record_decay(client, champion: ModelRef, fresh: dict[str, float], decay: dict, holdout: Snapshot) -> None:
    """Tag the champion's decay, and add its fresh-window metrics and the verdict (`decayed`, 1 or 0; none when
    unknown) to its run's history (step: the window's day), from which `pipelines.signals` counts decayed nights."""
    from mlflow.entities import Metric

    set_version_tags(client, champion, {"decay.status": decay["status"], "decay.reason": decay["reason"][:4000],
                                        "decay.window": window_tag(holdout.window)})
    run_id = client.get_model_version(champion.name, champion.version).run_id
    start = holdout.window[0]
    if run_id and start:
        step, now = int(start.strftime("%Y%m%d")), int(time.time() * 1000)
        metrics = {f"fresh_{k}": v for k, v in fresh.items() if math.isfinite(v)}
        if decay["status"] in ("ok", "decayed"):
            metrics[DECAYED_METRIC] = float(decay["status"] == "decayed")
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


# ---- rollback --------------------------------------------------------------------------------

def rollback(name: str, settings: Settings, reason: str, user: str | None = None, *, expect: tuple[str, str] | None = None,
             trigger: str = MANUAL, evidence: dict | None = None) -> dict:
    """Move `champion` back to `previous` under the promotion lock; record who, when and why on both versions (tags
    and pages), on the rolled-back version's run and on the model (`rollback.last`, and `rollback.count`, which
    `pipelines.signals` pushes).

    `previous` then follows the chain of replaced champions (`promotion.replaced`), so a second rollback goes one
    further back. `expect` = (champion, previous) makes it a compare-and-set: nothing moves unless both aliases
    still point there. `trigger` (`manual` or `decay`) is tagged `rollback.trigger` on the rolled-back version;
    `evidence` (the gate's: `reasons`, `holdout`, `primary`, `guards`, `lower_is_better`, and `metrics`, {version:
    holdout metrics}) puts the numbers on both pages.

    Returns {"model", "moved", "rolled_back", "champion" (the champion now), "previous", "by", "at", "reason",
    "trigger"}; `moved` is False (and `rolled_back` None) only with `expect`, when an alias had moved.

    Raises:
        PromotionError: without `expect`, no champion or no `previous` to go back to; the lock not had in time.
        LockLost: the lock's lease ran out before a write (nothing more is written).
    """
    client = use_store(settings)
    cfg = settings.promotion
    user, at = user or current_user(), _now()
    out = {"model": name, "by": user, "at": at, "reason": reason, "trigger": trigger}
    with promotion_lock(client, name, cfg.lock_timeout, cfg.lock_lease) as held:
        current, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
        if expect is not None and (current, previous) != expect:
            return {**out, "moved": False, "rolled_back": None, "champion": current, "previous": previous}
        if current is None:
            raise PromotionError(f"model {name!r} has no champion to roll back")
        if previous is None or previous == current:
            raise PromotionError(f"model {name!r}: champion v{current} has no previous champion (alias '{PREVIOUS}') to roll back to")
        held.check()
        before = client.get_model_version(name, previous).tags.get("promotion.replaced")
        client.set_registered_model_alias(name, CHAMPION, previous)
        # `previous` follows the chain of replaced champions, so a second rollback goes one further back.
        if before and before not in (current, previous):
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        note = f"v{current} -> v{previous} by {user} at {at}: {reason}"
        rolled, restored = ModelRef(name, current), ModelRef(name, previous)
        set_version_tags(client, rolled, {"promotion.decision": ROLLED_BACK, "promotion.reason": f"rolled back: {reason}"[:4000],
                                          "rollback.by": user, "rollback.at": at, "rollback.reason": reason[:4000],
                                          "rollback.to": previous, "rollback.trigger": trigger})
        set_version_tags(client, restored, {"rollback.restored_by": user, "rollback.restored_at": at,
                                            "rollback.restored_from": current, "rollback.restored_reason": reason[:4000]})
        model_tags = client.get_registered_model(name).tags
        count = int(model_tags["rollback.count"]) + 1 if model_tags.get("rollback.count", "").isdigit() else 1
        client.set_registered_model_tag(name, "rollback.last", note[:4000])
        client.set_registered_model_tag(name, "rollback.count", str(count))
        run_id = client.get_model_version(name, current).run_id
        if run_id:
            for key, value in {"rollback.by": user, "rollback.at": at, "rollback.reason": reason[:4000], "promotion.decision": ROLLED_BACK,
                               "rollback.trigger": trigger}.items():
                client.set_tag(run_id, key, value)
        held.check()
        _write_rollback_pages(client, rolled, restored, {**out, "reasons": (evidence or {}).get("reasons") or [reason]}, evidence or {})
    log.info("rolled back", extra={"model": name, "from": current, "to": previous, "by": user, "reason": reason, "trigger": trigger})
    return {**out, "moved": True, "rolled_back": current, "champion": previous, "previous": alias_version(client, name, PREVIOUS)}


def _write_rollback_pages(client, rolled: ModelRef, restored: ModelRef, base: dict, evidence: dict) -> None:
    """Put the rollback at the top of both versions' pages (`add_to_version_page`), with the holdout table of the two
    when `evidence` has their metrics."""
    metrics = evidence.get("metrics") or {}
    common = {**base, "champion_now": restored.version, "holdout": evidence.get("holdout"),
              **{role: evidence[role] for role in METRIC_ROLES if role in evidence}}
    for this, other, decision, role in ((rolled, restored, ROLLED_BACK, "restored"), (restored, rolled, RESTORED, "rolled back")):
        contenders = {"challenger": metrics.get(this.version) or {}, "champion": metrics.get(other.version) or {}} if metrics else {}
        add_to_version_page(client, this, {**common, "decision": decision, "challenger": this.version, "champion": other.version,
                                           "contenders": contenders, "column_titles": {"champion": f"v{other.version} ({role})"}})


def rollback_refusal(version: str, tags: dict[str, str], cfg: PromotionSettings, now: datetime) -> str | None:
    """Why version `version` (with its `tags`) may not become champion again by an automatic rollback; None when it may.

    Refused: a version that did not pass its own gate (`promotion.decision` other than promoted), one a person
    rolled back (a person's rollback is undone by a person only), and one rolled back from for decay less than
    `promotion.rollback_quiet_days` days before `now` (no flapping between two versions). A version rolled back
    for decay longer ago may come back: it had passed its gate, and the world may have come back to it.
    """
    if "rollback.at" in tags:
        if tags.get("rollback.trigger") != DECAY:
            return (f"v{version} was rolled back by {tags.get('rollback.by')} at {tags['rollback.at']} "
                    f"({tags.get('rollback.reason')}): only a person brings it back")
        try:
            at = datetime.fromisoformat(tags["rollback.at"])
        except ValueError:
            return f"v{version} was rolled back from for decay at an unreadable time ({tags['rollback.at']!r})"
        if now - (at if at.tzinfo else at.replace(tzinfo=timezone.utc)) < timedelta(days=cfg.rollback_quiet_days):
            return (f"v{version} was rolled back from for decay at {tags['rollback.at']}, less than "
                    f"promotion.rollback_quiet_days ({cfg.rollback_quiet_days:g}) days ago")
        return None
    if tags.get("promotion.decision") != PROMOTED:
        return f"v{version} did not pass its own gate (promotion.decision {tags.get('promotion.decision')!r})"
    return None


def _rollback_entry(status: str, source: str, target: str | None, reason: str, **extra: Any) -> dict:
    """The decision record's `rollback`: what became of a decayed champion (`from`) and why."""
    return {"status": status, "from": source, "to": target, "reason": reason, **extra}


def roll_back_decayed(client, spec: TaskSpec, champion: ModelRef, champion_metrics: dict[str, float], decay: dict,
                      holdout: Snapshot, settings: Settings, user: str) -> dict:
    """After a gate that left the decayed `champion` in place: move `champion` back to `previous` when setting
    `promotion.auto_rollback` is on, `previous` may come back (`rollback_refusal`, and the holdout overlaps none of
    its training data), and on the same `holdout`, evaluated as the gate evaluates (`holdout_metrics`), it beats the
    champion's `champion_metrics` on the primary metric by `promotion.margin` (`beats_on_primary`).

    The move is `rollback`'s compare-and-set against the (champion, previous) read here, with trigger `decay`, so a
    champion moved meanwhile (a manual promote or rollback) is left alone. The restored version's decay on the holdout
    is recorded as the new champion's (`_record_decay`).

    Returns the decision record's `rollback`: {"status": rolled_back | refused | off | lost, "from", "to", "reason",
    "previous_metrics" (when evaluated)}. `previous` that cannot be judged on the holdout (a `NightshiftError` of its
    evaluation) is refused, with the error as the reason.

    Raises:
        PromotionError: the lock is not had in time (`LockLost`: its lease ran out).
    """
    cfg, name, source = settings.promotion, champion.name, champion.version
    head = f"champion v{source} decayed ({decay['reason']})"
    if not cfg.auto_rollback:
        return _rollback_entry("off", source, None, f"{head}; not rolled back: setting promotion.auto_rollback is off")
    target = alias_version(client, name, PREVIOUS)
    if target is None or target == source:
        return _rollback_entry("refused", source, None, f"{head}; not rolled back: no previous champion (alias '{PREVIOUS}')")
    refusal = rollback_refusal(target, client.get_model_version(name, target).tags, cfg, datetime.now(timezone.utc))
    if refusal is None:
        try:
            choose_holdout(client, spec, [ModelRef(name, target)], settings, holdout.path)
        except PromotionError as exc:
            refusal = f"v{target} cannot be judged on this holdout: {exc}"
    if refusal is not None:
        return _rollback_entry("refused", source, target, f"{head}; not rolled back: {refusal}")
    try:
        previous_metrics = holdout_metrics(f"{name}/{target}", holdout.path, settings)
    except NightshiftError as exc:  # the gate's own decision stands; the record says why nothing was rolled back
        return _rollback_entry("refused", source, target, f"{head}; not rolled back: v{target} could not be judged on the holdout: {exc}")
    beats, verdict = beats_on_primary(spec, previous_metrics, champion_metrics, cfg.margin, who=f"v{target}", whom=f"champion v{source}")
    if not beats:
        return _rollback_entry("refused", source, target, f"{head}; not rolled back: v{target} ({PREVIOUS}) on the same holdout: {verdict}",
                               previous_metrics=previous_metrics)
    reasons = [head, f"v{target} ({PREVIOUS}) on the same holdout: {verdict}"]
    evidence = {"reasons": reasons, "holdout": _holdout_entry(holdout), **spec.metric_roles(), "metrics": {source: champion_metrics, target: previous_metrics}}
    out = rollback(name, settings, "; ".join(reasons), user, expect=(source, target), trigger=DECAY, evidence=evidence)
    if not out["moved"]:
        return _rollback_entry("lost", source, target, f"{head}; not rolled back: the aliases moved while the gate ran "
                                                       f"(champion v{out['champion']}, previous v{out['previous']})",
                               previous_metrics=previous_metrics)
    restored = ModelRef(name, target)
    _record_decay(client, restored, previous_metrics, champion_decay(client, restored, previous_metrics, spec, cfg), holdout)
    return _rollback_entry("rolled_back", source, target, f"{head}; v{target} beats it on the same holdout ({verdict}): "
                                                          f"rolled back to v{target}", previous_metrics=previous_metrics, at=out["at"])
