"""The int8 scoring graph of a BERT classifier: the fine-tuned model exported to ONNX and its weights quantised to
int8 (ONNX Runtime dynamic quantisation, one scale per output channel of each weight matrix), run by ONNX Runtime on
the CPU.

On 2 CPU cores (MiniLM, mean-pooled, batches of 64 length-sorted texts) it scores about 2.3x the texts per second of
the fp32 PyTorch forward pass. Quantising moves scores a little (MiniLM fine-tuned on the demo logs, 3000 distinct
texts: mean |int8 - fp32| probability 0.007 and no decision changed, where one scale per weight matrix gave 0.031
and 15 changed decisions), so a version serves it only where the decisions agreed with fp32 on its validation texts
(`pipelines.training.fine_tune.classifier_candidate`). Activations are quantised with one scale per batch, so a
text's int8 score also moves (by about 1e-4) with the texts batched beside it; fp32 scores do not.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

INT8_FILE = "model.int8.onnx"  # in the version's checkpoint folder, beside the fp32 weights
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
RUNTIMES = ("fp32", "int8")


def export_int8(model, out_file: str | Path) -> Path:
    """Write `model` (a `transformers` BERT sequence classifier, or `nightshift_models.bert.MeanPooledBertClassifier`)
    as an int8 ONNX graph at `out_file`: inputs `INPUTS` (int64, (batch, tokens), both axes dynamic), output `logits`
    (batch, K). The model is exported on the CPU in eval mode and left on the CPU in eval mode."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    out_file = Path(out_file)
    model.to("cpu").eval()
    attention = model.config._attn_implementation
    # Eager attention traces to plain MatMul/Softmax with the padding mask kept as a graph input; an example batch
    # with padding keeps the mask path in the trace (an all-ones mask may be dropped as "no mask" while tracing).
    model.set_attn_implementation("eager")
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = ids.clone()
    mask[1, 5:] = 0
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    try:
        with tempfile.TemporaryDirectory(prefix="nightshift-onnx-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes the graph keeps dynamic, said on every export
            fp32 = Path(tmp) / "model.onnx"
            torch.onnx.export(Logits(model).eval(), (ids, mask, torch.zeros_like(ids)), str(fp32), input_names=list(INPUTS),
                              output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
            # One scale per output channel: a single scale per weight matrix is set by its largest weight and
            # rounds the rest coarsely enough to flip decisions near the threshold. Same speed on the CPU.
            quantize_dynamic(str(fp32), str(out_file), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        model.set_attn_implementation(attention)
        model.eval()
    return out_file


class Int8Session:
    """An ONNX Runtime session over an int8 graph (`export_int8`), on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None):
        """`threads`: intra-op threads (None: the torch thread count, so both runtimes use the same cores)."""
        self.path, self.threads = Path(path), threads
        self.session = self._open()

    def _open(self):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __getstate__(self) -> dict:
        # A pickled pyfunc holding it: the session reopens from the file when first used (MLflow's `load_context`
        # after unpickling points the pyfunc at the version's own copy first).
        return {"path": self.path, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.path, self.threads, self.session = state["path"], state["threads"], None

    def logits(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """(batch, K) float32 logits of a padded batch (`input_ids`, `attention_mask`; `token_type_ids` zeros when
        absent, as single-segment BERT reads them)."""
        if self.session is None:
            self.session = self._open()
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64),
                "token_type_ids": np.asarray(batch["token_type_ids"], dtype=np.int64) if "token_type_ids" in batch else np.zeros_like(ids)}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)
