"""Promotion: the champion/challenger gate, champion decay, rollback, and the compare-and-set that
moves the `champion` alias.

The gate judges the challenger and the champion on the same fresh holdout snapshot, which neither
trained on. The challenger becomes champion only when it beats the champion's primary metric by
`promotion.margin`, no guard metric regresses by more than its tolerance (`promotion.guard_tolerance`,
or its own in `promotion.guard_tolerances`), its data
validation passed, and its training data did not drift severely together with a label shift
(which points at a labelling fault rather than a changed world). The decision and its reasons go
into the version's tags and its run (`promotion/decision.json`); the replaced champion keeps the
alias `previous`, so `rollback` can restore it.

Moving `champion` is a compare-and-set: under a lock, the current champion is re-read and the
alias moves only when it is still the version the challenger was judged against. The lock is a
file lock beside a local SQLite store, and for a remote tracking server a registered model created
as a mutex with an owner token (the registry refuses a second one with the same name, atomically);
see `promotion_lock` for how a holder releases it and how a waiter breaks an abandoned one. A gate
that loses writes its decision under the lock too, and never onto a version another gate promoted.
"""

from __future__ import annotations

import fcntl
import getpass
import importlib
import json
import math
import os
import random
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.config import ConfigError, PromotionSettings, Settings
from pipelines.registry import ABANDONED, CHALLENGER, CHAMPION, PREVIOUS, ModelRef, alias_version, resolve, set_version_tags, use_store
from pipelines.snapshot import Snapshot, load_snapshot
from pipelines.telemetry import get_logger

log = get_logger("promotion")

PROMOTED, REJECTED, STALE, KEPT, ROLLED_BACK = "promoted", "rejected", "stale", "kept", "rolled_back"


class PromotionError(RuntimeError):
    """The gate or a rollback cannot run; the message says what is missing."""


@dataclass(frozen=True)
class GateSpec:
    """How one registered model is judged on a holdout.

    `evaluate` is "module:function", called as `fn(model_ref, snapshot_dir, settings, **options)`
    and returning `{"model_metrics": {name: value}}` (or the metrics themselves).
    """

    evaluate: str
    primary: str
    guards: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()  # error metrics (MAE, RMSE): smaller wins
    holdout_dataset: str = "logs-fresh"  # snapshot folder under the snapshot root holding fresh windows
    options: tuple[tuple[str, Any], ...] = ()

    def gain(self, metric: str, challenger: float, champion: float) -> float:
        """How much better the challenger is on `metric` (negative: worse)."""
        return champion - challenger if metric in self.lower_is_better else challenger - champion


# One line per registered model.
GATES: dict[str, GateSpec] = {
    "log-anomaly": GateSpec("pipelines.evaluate:evaluate", primary="f1", guards=("pr_auc", "recall"), options=(("baseline", False),)),
    "failure-rca": GateSpec("pipelines.evaluate:evaluate", primary="micro_f1", guards=("macro_f1",), options=(("baseline", False),)),
    "metric-forecast": GateSpec("pipelines.evaluate:evaluate", primary="mae", guards=("mae_last", "smape"),
                                lower_is_better=frozenset({"mae", "mae_last", "smape"}), holdout_dataset="metrics-fresh",
                                options=(("baseline", False),)),
}


def register_gate(name: str, spec: GateSpec) -> None:
    """Plug a model into the gate (e.g. `metric-forecast` with primary `mae`, lower is better)."""
    GATES[name] = spec


def gate_spec(name: str) -> GateSpec:
    if name not in GATES:
        raise PromotionError(f"model {name!r} has no promotion gate; known: {', '.join(sorted(GATES))} (pipelines.promotion.GATES)")
    return GATES[name]


def holdout_metrics(spec: GateSpec, model_ref: str, holdout: Path, settings: Settings) -> dict[str, float]:
    """The finite numeric metrics of one version on the holdout, through the model's evaluate function."""
    module, _, function = spec.evaluate.partition(":")
    out = getattr(importlib.import_module(module), function)(model_ref, holdout, settings, **dict(spec.options))
    metrics = out.get("model_metrics", out) if isinstance(out, dict) else {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---- the decision ----------------------------------------------------------------------------

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


def decide(spec: GateSpec, challenger: dict[str, float], champion: dict[str, float], validation: str,
           drift: dict, cfg: PromotionSettings) -> tuple[bool, list[str]]:
    """The gate's verdict and its reasons, from holdout metrics, validation status and drift."""
    ok, reasons = True, []
    tolerances = guard_tolerances(cfg)
    p, c, k = spec.primary, challenger.get(spec.primary, math.nan), champion.get(spec.primary, math.nan)
    if not (math.isfinite(c) and math.isfinite(k)):
        ok = False
        reasons.append(f"primary metric {p} is undefined on the holdout (challenger {c}, champion {k})")
    else:
        gain = spec.gain(p, c, k)
        beats = gain > 0 and gain >= cfg.margin
        ok &= beats
        reasons.append(f"{p} {c:.4f} vs champion {k:.4f}: {'beats' if beats else 'does not beat'} it by the margin {cfg.margin} "
                       f"({'+' if gain >= 0 else ''}{gain:.4f})")
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


def champion_decay(client, champion: ModelRef, fresh: dict[str, float], spec: GateSpec, cfg: PromotionSettings) -> dict:
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


# ---- compare-and-set -------------------------------------------------------------------------

def _local_lock_dir(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "locks"
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        return Path(tracking_uri.removeprefix("file://")) / "locks"
    return None


class LockLost(PromotionError):
    """The holder ran past its lease: a waiter may have broken the lock, so nothing more is written."""


class Lease:
    """What a holder of the promotion lock knows: its owner token and how long it has held the lock.

    `check()` before each write inside the lock: a waiter breaks a lock only after seeing the same
    owner for a whole lease on its own clock, so a holder that is still inside `lease - margin` of
    its own clock is still the only holder.
    """

    def __init__(self, owner: str, lease: float | None):
        self.owner, self.lease, self.acquired = owner, lease, time.monotonic()
        # the margin covers a waiter's poll interval and one registry round trip
        self.margin = 0.0 if lease is None else min(10.0, lease / 4)

    @property
    def held(self) -> float:
        return time.monotonic() - self.acquired

    def alive(self) -> bool:
        return self.lease is None or self.held < self.lease - self.margin

    def check(self) -> None:
        """Raises `LockLost` when the lease has run out."""
        if not self.alive():
            raise LockLost(f"promotion lock held {self.held:.1f}s, past its lease of {self.lease}s less a margin of "
                           f"{self.margin:.1f}s (setting promotion.lock_lease): another gate may hold it now; nothing written")


def _mlflow_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _owner_of(client, model: str) -> str | None:
    """The owner token on a registry mutex, or None when there is none (released meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model).tags.get("owner", "")
    except MlflowException as exc:
        if _mlflow_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _try_create(client, model: str, owner: str, description: str) -> bool:
    """Create the registered model `model` owned by `owner` (name and tag in one transaction); False when it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model, tags={"owner": owner, "host": socket.gethostname(), "pid": str(os.getpid())},
                                       description=description)
        return True
    except MlflowException as exc:
        if _mlflow_code(exc) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False  # exists; or raced a delete inside the server: look again
        raise


def _delete_if_owner(client, model: str, owner: str) -> bool:
    """Delete the registered model `model` when `owner` still owns it; True when deleted."""
    from mlflow.exceptions import MlflowException

    if _owner_of(client, model) != owner:
        return False
    try:
        client.delete_registered_model(model)
        return True
    except MlflowException as exc:
        if _mlflow_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _break_abandoned(client, mutex: str, owner: str) -> bool:
    """Delete `mutex` held by `owner`, whom the caller has seen hold it for a whole lease.

    Of several waiters breaking the same lease only one may delete, or the second would delete the
    mutex the first has just created. A marker `MUTEX.break-OWNER`, created atomically, picks that
    one; it re-reads the owner before deleting. Returns True when this waiter broke it.
    """
    marker, me = f"{mutex}.break-{owner}", uuid.uuid4().hex
    if not _try_create(client, marker, me, f"a waiter is breaking the abandoned lock of {owner}"):
        return False
    try:
        broken = _delete_if_owner(client, mutex, owner)
    finally:
        # safe after the delete: a later breaker of `owner` re-reads the mutex and finds a new owner
        _delete_if_owner(client, marker, me)
    if broken:
        log.warning("broke an abandoned promotion lock", extra={"lock": mutex, "owner": owner})
    return broken


@contextmanager
def promotion_lock(client, name: str, timeout: float | None = None, lease: float | None = None) -> Iterator[Lease]:
    """Exclusive across processes for one registered model; yields the holder's `Lease`.

    A local store: `fcntl.flock` on `locks/NAME.lock` beside it (released by the OS if the process
    dies, so no lease). A tracking server: the registered model `NAME.promotion-lock`, created with
    an owner token (the registry's unique name makes the create atomic). The holder deletes it only
    while it still names its own token and its lease has not run out; a waiter that sees the same
    owner for a whole lease (on its own clock) breaks it through `_break_abandoned`.

    Raises:
        PromotionError: the lock is still held after `timeout` seconds.
        ConfigError: `timeout` is not longer than `lease` (a waiter would give up before it may break an abandoned lock).
    """
    defaults = PromotionSettings()
    timeout = defaults.lock_timeout if timeout is None else timeout
    lease = defaults.lock_lease if lease is None else lease
    deadline = time.monotonic() + timeout
    where = _local_lock_dir(client.tracking_uri)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        with open(where / f"{name}.lock", "w") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PromotionError(f"promotion lock {where / (name + '.lock')} still held after {timeout}s "
                                             "(setting promotion.lock_timeout)") from None
                    time.sleep(0.05)
            try:
                yield Lease(uuid.uuid4().hex, None)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return

    if timeout <= lease:
        raise ConfigError(f"setting promotion.lock_timeout ({timeout}s) must be longer than promotion.lock_lease ({lease}s): "
                          "a gate retried after a crash would give up before the crashed gate's lock may be broken")
    mutex, me = f"{name}.promotion-lock", uuid.uuid4().hex
    seen: tuple[str, float] | None = None  # (owner, since when on this clock)
    while not _try_create(client, mutex, me, f"held while nightshift moves the champion of {name}"):
        owner = _owner_of(client, mutex)
        now = time.monotonic()
        if owner is None and now <= deadline:  # released meanwhile: create again at once
            seen = None
            continue
        if seen is None or seen[0] != owner:
            seen = (owner, now)
        elif now - seen[1] >= lease and owner is not None and _break_abandoned(client, mutex, owner):
            seen = None
            continue
        if now > deadline:
            raise PromotionError(f"registered model {mutex!r} (the promotion lock) still held by {owner} after {timeout}s "
                                 "(setting promotion.lock_timeout)")
        time.sleep(0.1 + random.random() * 0.1)  # jitter: waiters do not hit the registry in step
    held = Lease(me, lease)
    try:
        yield held
    finally:
        if held.alive():
            _delete_if_owner(client, mutex, me)
        else:  # a waiter may be breaking it right now; deleting could remove the next holder's mutex
            log.warning("promotion lock held past its lease; left for a waiter to break", extra={"lock": mutex, "held_s": round(held.held, 1)})


def compare_and_set_champion(client, name: str, expected: str | None, new: str, *, on_commit: Callable[[], None] | None = None,
                             timeout: float | None = None, lease: float | None = None) -> tuple[bool, str | None]:
    """Move `champion` to `new` only if it still is `expected` (None: no champion yet); the replaced
    champion becomes `previous`. Returns (moved, the champion now). `on_commit` runs under the lock,
    after the alias moved.

    Raises:
        LockLost: the lock's lease ran out before a write (nothing more is written).
        PromotionError: the lock could not be had within `timeout`.
    """
    with promotion_lock(client, name, timeout, lease) as held:
        current = alias_version(client, name, CHAMPION)
        if current != expected:
            return False, current
        held.check()
        if expected is not None and expected != new:
            client.set_registered_model_alias(name, PREVIOUS, expected)
        client.set_registered_model_alias(name, CHAMPION, new)
        if on_commit:
            held.check()
            on_commit()
        return True, new


# ---- the gate --------------------------------------------------------------------------------

def _window(text: str | None) -> tuple[datetime, datetime] | None:
    try:
        start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (text or "").split("/"))
        return start, end
    except ValueError:
        return None


def choose_holdout(client, spec: GateSpec, refs: list[ModelRef], settings: Settings, holdout: str | Path | None) -> Snapshot:
    """The given holdout, checked to be disjoint from every training window in `refs`; otherwise the
    newest snapshot under `<snapshots>/<holdout_dataset>/` that starts after all of them end."""
    trained = {}
    for ref in refs:
        tags = client.get_model_version(ref.name, ref.version).tags
        trained[ref.version] = (_window(tags.get("data.window")), tags.get("data.snapshot_hash"))
    ends = [w[1] for w, _ in trained.values() if w]

    def disjoint(snapshot: Snapshot) -> str | None:
        window = _window(snapshot.window)
        for version, (w, digest) in trained.items():
            if digest and digest == snapshot.content_hash:
                return f"v{version} trained on this very snapshot"
            if w and window and window[0] < w[1] and w[0] < window[1]:
                return f"its window {snapshot.window} overlaps v{version}'s training window {w[0].isoformat()}/{w[1].isoformat()}"
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
        window = _window(snapshot.window)
        if window and all(window[0] >= end for end in ends) and disjoint(snapshot) is None:
            candidates.append((window[0], snapshot))
    if not candidates:
        raise PromotionError(f"no fresh holdout under {root} that starts after the training windows; pass --holdout SNAPSHOT_DIR")
    return max(candidates, key=lambda c: c[0])[1]


def current_user() -> str:
    return os.environ.get("NIGHTSHIFT_USER") or getpass.getuser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _log_record(client, ref: ModelRef, record: dict, metrics: dict[str, float]) -> None:
    """The decision as `promotion/decision.json`, run tags and holdout metrics on the version's run."""
    from mlflow.entities import Metric

    run_id = client.get_model_version(ref.name, ref.version).run_id
    if not run_id:
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "decision.json").write_text(json.dumps(record, indent=2, default=str))
        client.log_artifacts(run_id, tmp, "promotion")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)])
    client.set_tag(run_id, "promotion.decision", record["decision"])
    client.set_tag(run_id, "promotion.reason", record["reason"][:4000])


def _drift_for(client, challenger: ModelRef, champion: ModelRef, settings: Settings) -> dict:
    """The challenger's drift against this champion: reused from its tags when already checked, else run now."""
    from pipelines.drift import check_drift

    tags = client.get_model_version(challenger.name, challenger.version).tags
    if tags.get("drift.reference_version") == champion.version and tags.get("drift.status", "not_run") != "not_run":
        return {"status": tags["drift.status"], "label_shift": tags.get("drift.label_shift") == "true", "reused": True}
    report = check_drift(client, challenger, settings, champion)
    return {"status": report["status"], "label_shift": report["label_shift"], "reason": report.get("reason")}


def promote(name: str, settings: Settings, holdout: str | Path | None = None, version: str | None = None,
            before_commit: Callable[[], None] | None = None) -> dict:
    """Run the gate for `name`'s challenger (or `version`) against its champion; move `champion`
    by compare-and-set when it passes. Returns the decision record (also in tags and on the run)."""
    cfg = settings.promotion
    for setting in ("margin", "guard_tolerance", "decay_tolerance"):
        if getattr(cfg, setting) < 0:
            raise ConfigError(f"setting promotion.{setting} must be >= 0 (is {getattr(cfg, setting)})")
    guard_tolerances(cfg)  # a malformed setting fails before any evaluation runs
    client = use_store(settings)
    spec = gate_spec(name)
    challenger = resolve(client, f"{name}/{version}" if version else f"{name}@{CHALLENGER}")
    champion_version = alias_version(client, name, CHAMPION)
    user, at = current_user(), _now()
    base = {"model": name, "challenger": challenger.version, "champion": champion_version, "by": user, "at": at}

    if champion_version is None:
        moved, now = compare_and_set_champion(
            client, name, None, challenger.version, timeout=cfg.lock_timeout, lease=cfg.lock_lease,
            on_commit=lambda: set_version_tags(client, challenger, {"promotion.decision": PROMOTED, "promotion.reason": "first version: no champion yet"}))
        if moved:
            return {**base, "decision": PROMOTED, "reason": "first version: no champion yet", "champion_now": now}
        champion_version = base["champion"] = now  # another first version won the race
    if champion_version == challenger.version:
        return {**base, "decision": KEPT, "reason": f"v{challenger.version} already is the champion", "champion_now": champion_version}

    champion = ModelRef(name, champion_version)
    tags = client.get_model_version(name, challenger.version).tags
    if tags.get("promotion.decision") == ABANDONED:  # its training task died before deciding; a retry registered another
        reason = f"v{challenger.version} was abandoned: {tags.get('promotion.reason', 'its training task died')}"
        return {**base, "decision": REJECTED, "reason": reason, "reasons": [reason], "champion_now": champion_version}
    if "rollback.at" in tags:  # refused without touching its tags: they keep saying who rolled it back and why
        reason = (f"v{challenger.version} was rolled back at {tags['rollback.at']} by {tags.get('rollback.by')}: "
                  f"{tags.get('rollback.reason')}; train a new candidate")
        return {**base, "decision": REJECTED, "reason": reason, "reasons": [reason], "champion_now": champion_version}

    snapshot = choose_holdout(client, spec, [challenger, champion], settings, holdout)
    drift = _drift_for(client, challenger, champion, settings)
    validation = tags.get("validation.status", "not_run")
    challenger_metrics = holdout_metrics(spec, f"{name}/{challenger.version}", snapshot.path, settings)
    champion_metrics = holdout_metrics(spec, f"{name}/{champion.version}", snapshot.path, settings)
    decay = champion_decay(client, champion, champion_metrics, spec, cfg)
    ok, reasons = decide(spec, challenger_metrics, champion_metrics, validation, drift, cfg)
    from pipelines.evaluate import face_baseline  # evaluate reaches back into training code; kept off this module's import

    versus = face_baseline(name, f"{name}/{challenger.version}", snapshot.path, settings, challenger_metrics, spec.primary)
    ok &= versus["ok"]
    reasons.append(versus["reason"])
    record = {**base, "primary": spec.primary, "guards": list(spec.guards),
              "holdout": {"snapshot": str(snapshot.path), "content_hash": snapshot.content_hash, "window": snapshot.window},
              "challenger_metrics": challenger_metrics, "champion_metrics": champion_metrics,
              "contenders": {**versus["contenders"], "champion": champion_metrics},
              "validation": validation, "drift": drift, "champion_decay": decay,
              "settings": {"margin": cfg.margin, "guard_tolerance": cfg.guard_tolerance}}
    _record_decay(client, champion, champion_metrics, decay, snapshot)

    decision = PROMOTED if ok else REJECTED
    now = champion_version
    if ok:
        if before_commit:
            before_commit()
        record.update(decision=PROMOTED, reasons=reasons, reason="; ".join(reasons))
        moved, now = compare_and_set_champion(
            client, name, champion_version, challenger.version, timeout=cfg.lock_timeout, lease=cfg.lock_lease,
            on_commit=lambda: _record(client, challenger, record, challenger_metrics, champion_metrics))
        if not moved:
            decision = STALE
            reasons.append(f"compare-and-set lost: champion moved from v{champion_version} to v{now} while the gate ran; "
                           "run the gate again against the new champion")
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
                _record(client, challenger, record, challenger_metrics, champion_metrics)
    log.info("gate decided", extra={"model": name, "challenger": challenger.version, "champion": champion_version,
                                    "decision": decision, "champion_now": now})
    return {**record, "champion_now": now}


def _record(client, ref: ModelRef, record: dict, challenger_metrics: dict, champion_metrics: dict) -> None:
    tags = {"promotion.decision": record["decision"], "promotion.reason": record["reason"][:4000],
            "promotion.by": record["by"], "promotion.at": record["at"]}
    if record.get("champion"):
        tags["promotion.against"] = record["champion"]
        if record["decision"] == PROMOTED:
            tags["promotion.replaced"] = record["champion"]
    if record.get("holdout"):
        tags["promotion.holdout_hash"] = record["holdout"]["content_hash"]
    set_version_tags(client, ref, tags)
    _log_record(client, ref, record, {**{f"holdout_{k}": v for k, v in challenger_metrics.items()},
                                      **{f"holdout_champion_{k}": v for k, v in champion_metrics.items()}})


def _record_decay(client, champion: ModelRef, fresh: dict[str, float], decay: dict, holdout: Snapshot) -> None:
    """Tag the champion's decay, and add its fresh-window metrics to its run's history (step: the window's day)."""
    from mlflow.entities import Metric

    set_version_tags(client, champion, {"decay.status": decay["status"], "decay.reason": decay["reason"][:4000],
                                        "decay.window": holdout.window})
    run_id = client.get_model_version(champion.name, champion.version).run_id
    window = _window(holdout.window)
    if run_id and window:
        step, now = int(window[0].strftime("%Y%m%d")), int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"fresh_{k}", v, now, step) for k, v in fresh.items() if math.isfinite(v)])


# ---- rollback --------------------------------------------------------------------------------

def rollback(name: str, settings: Settings, reason: str, user: str | None = None) -> dict:
    """Move `champion` back to `previous`; record who, when and why on both versions and the model."""
    client = use_store(settings)
    cfg = settings.promotion
    user, at = user or current_user(), _now()
    with promotion_lock(client, name, cfg.lock_timeout, cfg.lock_lease) as held:
        current, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
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
                                          "rollback.to": previous})
        set_version_tags(client, restored, {"rollback.restored_by": user, "rollback.restored_at": at,
                                            "rollback.restored_from": current, "rollback.restored_reason": reason[:4000]})
        client.set_registered_model_tag(name, "rollback.last", note[:4000])
        run_id = client.get_model_version(name, current).run_id
        if run_id:
            for key, value in {"rollback.by": user, "rollback.at": at, "rollback.reason": reason[:4000], "promotion.decision": ROLLED_BACK}.items():
                client.set_tag(run_id, key, value)
    log.info("rolled back", extra={"model": name, "from": current, "to": previous, "by": user, "reason": reason})
    return {"model": name, "rolled_back": current, "champion": previous, "previous": alias_version(client, name, PREVIOUS),
            "by": user, "at": at, "reason": reason}
