"""The registry side: a registered version's training snapshot against the champion's, the champion's own sentence
embeddings, and the report logged on the version's run with its tags."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipelines.config import Settings
from pipelines.data.drift.checks import Embedder, compare_snapshots
from pipelines.data.drift.page import render_html
from pipelines.data.snapshots import Snapshot, load_snapshot
from pipelines.errors import NightshiftError
from pipelines.registry.store import CHAMPION, ModelRef, alias_version, load_model, set_version_tags, snapshot_lineage


def sentence_embedder(classifier, batch_size: int = 64) -> Embedder | None:
    """Mean-pooled encoder states of a BERT pyfunc's model (None for models without one)."""
    model, tokenizer = getattr(classifier, "model", None), getattr(classifier, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "base_model"):
        return None
    max_length = int(getattr(classifier, "meta", {}).get("max_length", 64))
    device = getattr(classifier, "device", "cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        import torch

        from nightshift_models.bert import length_sorted_batches

        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        model.eval()
        with torch.inference_mode():
            for idx, batch in length_sorted_batches(tokenizer, list(texts), batch_size, max_length):
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden = model.base_model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        return out

    return embed


class DriftNotChecked(NightshiftError, RuntimeError):
    """A version's training snapshot (its `data.snapshot` lineage) cannot be read: the gate must not promote unchecked."""


def _readable(location: str, ref: ModelRef) -> Snapshot:
    try:
        return load_snapshot(location)
    except Exception as exc:  # noqa: BLE001 - gone, never committed, or the store unreachable: all stop the gate
        raise DriftNotChecked(f"drift of {ref.name} v{ref.version}: its training snapshot {location} (tag data.snapshot) cannot be "
                              f"read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def check_drift(client, ref, settings: Settings, champion=None) -> dict:
    """Drift of a version's training snapshot against the champion's; logged on the version's run.

    Writes `drift/report.json` and `drift/report.html` to the run, `drift_*` metrics, and the
    tags `drift.status` (none|warn|severe|not_run) and `drift.label_shift` on the version and run.

    Raises:
        DriftNotChecked: either version's training snapshot (`data.snapshot` tag) cannot be read from here.
    """
    if champion is None:
        version = alias_version(client, ref.name, CHAMPION)
        champion = ModelRef(ref.name, version) if version else None
    run_id = client.get_model_version(ref.name, ref.version).run_id
    current = snapshot_lineage(client, ref)
    reference = snapshot_lineage(client, champion) if champion else None
    if champion is None or champion.version == ref.version:
        report: dict[str, Any] = {"status": "not_run", "reason": "no other champion to compare with", "label_shift": False, "checks": []}
    elif current is None or reference is None:
        missing = f"v{ref.version}" if current is None else f"the champion v{champion.version}"
        report = {"status": "not_run", "reason": f"{missing} has no data.snapshot lineage tag", "label_shift": False, "checks": []}
    else:
        old, new = _readable(reference, ModelRef(champion.name, champion.version)), _readable(current, ModelRef(ref.name, ref.version))
        _, model = load_model(client, f"{champion.name}/{champion.version}")
        report = compare_snapshots(old, new, settings, sentence_embedder(model.unwrap_python_model()))
        report["reason"] = f"training snapshot of v{ref.version} against the training snapshot of champion v{champion.version}"
    report.update({"model": ref.name, "version": ref.version, "reference_version": champion.version if champion else None})

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (Path(tmp) / "report.html").write_text(render_html(report))
        client.log_artifacts(run_id, tmp, "drift")
    metrics = {f"drift_{c['name'].replace('.', '_')}": c["value"] for c in report["checks"] if np.isfinite(c["value"])}
    if metrics:
        from mlflow.entities import Metric

        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    tags = {"drift.status": report["status"], "drift.label_shift": str(report["label_shift"]).lower(),
            "drift.reference_version": str(report["reference_version"] or "")}
    set_version_tags(client, ref, tags)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return report
