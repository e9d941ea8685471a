"""The MLflow pyfunc for the BERT log models: anyone can `mlflow.pyfunc.load_model("models:/log-anomaly@champion")`
and call `predict` on a DataFrame with a `message` column.

The version carries everything it needs: the fine-tuned weights and tokenizer (artifact
`checkpoint`), and `nightshift.json` beside them with the task, output names, thresholds, max
length and normaliser. The normaliser is applied inside, so callers pass raw log messages.

The contract (both tasks alike, `mlflow models serve` and `nightshift serve` alike):
- input: a `message` column of non-empty strings; a null, a number or blank text is refused with
  MLflow's invalid-parameter error naming the row and the field (`input row 3: 'message' is null`);
  a version that reads context fields (`nightshift.json` `context_fields`, e.g. `level`) takes each as an
  optional column of that name, a missing column or value read as unknown (`[-]`);
- runtime: a BERT version whose `nightshift.json` `int8` check passed at registration carries an int8 ONNX graph
  (`nightshift_models.int8`) beside its weights and scores with it on the CPU; fp32 PyTorch otherwise (on CUDA, for
  a version without the graph, for one whose check failed, or when `use_runtime("fp32")` asks for it);
- params, declared in the signature (`TextClassifier.param_schema`): `batch_size` (texts per
  forward pass), `threshold` (log-anomaly: instead of the tuned one; failure-rca: one threshold for
  every label, as the PyTorch_pro demos' API took it) and, for failure-rca, `kb_min_similarity` (the
  knowledge-base floor instead of the version's own). A bad value is refused the same way.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel  # not `mlflow.pyfunc.PythonModel`: mlflow's __init__ makes `pyfunc` a LazyLoader for type checkers

from nightshift_models.baselines import family_proba, load_family
from nightshift_models.errors import InputError, invalid
from nightshift_models.int8 import INT8_FILE, RUNTIMES, Int8Session
from nightshift_models.normalize import normalize
from nightshift_models.root_cause_head import RootCauseHead

META_FILE = "nightshift.json"
FIELD = "message"
DEFAULT_BATCH_SIZE = 64


def write_meta(checkpoint_dir: Path, meta: dict[str, Any]) -> None:
    (Path(checkpoint_dir) / META_FILE).write_text(json.dumps(meta, indent=2))


def model_texts(messages: Sequence[str], fields: Sequence[str] = (), context: Mapping[str, Sequence[object]] | None = None) -> list[str]:
    """The text a model reads: `[value] [value] normalised message`, one bracket per context field
    (e.g. `("level", "service")` -> `[error] [kernel] disk failure on <PATH>`); a missing value is `[-]`.
    With no fields this is `normalize(message)`, what every version before the context fields read."""
    texts = [normalize(m) for m in messages]
    if not fields:
        return texts
    context = context or {}
    columns = [list(context[f]) if context.get(f) is not None else [None] * len(texts) for f in fields]
    def value(v: object) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) or not str(v).strip() else str(v).strip().lower()
    return [" ".join(f"[{value(col[i])}]" for col in columns) + " " + t for i, t in enumerate(texts)]


def context_fields(model) -> tuple[str, ...]:
    """The context columns a version reads beside `message` (`model_texts`), e.g. ("level",): its `nightshift.json`
    `context_fields`; none for a model without that file's `meta` (any other classifier)."""
    return tuple((getattr(model, "meta", None) or {}).get("context_fields", ()))


def text_problem(value: object, max_chars: int | None = None) -> str | None:
    """Why a log model cannot read `value` as a message, or None when it can (the same rule for both tasks)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "is null; send the log line's text"
    if isinstance(value, (bool, np.bool_, numbers.Number)):
        return f"is a number ({value!r}), not text"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not text"
    if not value.strip():
        return "has no text (empty or blank)"
    if max_chars is not None and len(value) > max_chars:
        return f"has {len(value)} characters, more than the {max_chars} accepted"
    return None


def check_messages(values: Sequence[object]) -> list[str]:
    """The messages as strings, in order.

    Raises:
        MlflowException (INVALID_PARAMETER_VALUE): `input row N: 'message' ...` for the first rows at fault.
    """
    problems = [(i, p) for i, v in enumerate(values) if (p := text_problem(v)) is not None]
    if problems:
        shown = "; ".join(f"input row {i}: '{FIELD}' {p}" for i, p in problems[:5])
        more = f" (and {len(problems) - 5} more rows)" if len(problems) > 5 else ""
        raise invalid(shown + more)
    return cast(list[str], list(values))  # text_problem passed each value: all are str


@dataclass(frozen=True)
class Options:
    """Validated per-request params."""

    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float | None = None
    kb_min_similarity: float | None = None


def _probability(params: dict, name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise invalid(f"param '{name}': {value!r} is not a number in [0, 1]")
    return float(value)


class TextClassifier(PythonModel):
    """K probabilities per text from the family the version won with (fine-tuned BERT, TF-IDF + LR,
    frozen-encoder embedding + LR), thresholds per output, and the log-text normaliser inside."""

    # What MLflow runs to build this pyfunc when it loads a version (models-from-code; `log_version` logs it).
    FROM_CODE = Path(__file__).parent / "from_code" / "text_classifier.py"
    sklearn: Any = None  # the tfidf / embedding family's fitted head; None for a BERT
    rca: Any = None  # the root-cause head (labels, actions, knowledge base) of a failure-rca version
    session: Any = None  # the int8 ONNX Runtime session (`nightshift_models.int8.Int8Session`) when that runtime serves

    def load_context(self, context) -> None:
        """Load the family the version serves (`nightshift.json` `family`; a version without one is a BERT):
        bert: the fine-tuned checkpoint; tfidf: the sklearn pipeline (joblib); embedding: the frozen
        encoder saved in the checkpoint folder plus its logistic-regression head (joblib)."""
        from nightshift_models.bert import load_classifier, load_encoder
        from nightshift_models.devices import pick_device

        path = Path(context.artifacts["checkpoint"])
        self.meta = json.loads((path / META_FILE).read_text())
        self.device = pick_device("auto")
        self.sklearn = None
        kind = self.meta.get("family", "bert")
        if kind == "bert":
            self.tokenizer, self.model = load_classifier(str(path))
            self.model.to(self.device).eval()
        else:
            self.sklearn = load_family(path, kind, int(self.meta.get("max_length", 128)))
            self.tokenizer = self.model = None  # tfidf: no encoder (drift skips the embedding check)
            if kind == "embedding":
                self.tokenizer, self.model = load_encoder(str(path))
                self.model.to(self.device).eval()
                self.sklearn.attach(self.tokenizer, self.model, self.device)
        self.thresholds = np.asarray(self.meta["thresholds"], dtype=np.float32)
        self.rca = None
        if self.task == "failure-rca":
            self.rca = RootCauseHead.from_meta(self.meta)
        self.path = path
        self.session = None
        self.use_runtime("int8")

    def int8_problem(self) -> str | None:
        """Why this version cannot serve int8 here, or None when it can: it is no BERT, it has no int8 graph (a version
        registered before them), its registration check failed (`nightshift.json` `int8.reason`), or the model runs
        on CUDA (int8 ONNX Runtime is the CPU path; CUDA keeps PyTorch)."""
        check = self.meta.get("int8")
        if self.meta.get("family", "bert") != "bert":
            return f"family {self.meta['family']} has no int8 graph"
        if check and not check.get("passed"):
            return check.get("reason") or "the version's int8 check did not pass"
        if not check or not (self.path / check.get("file", INT8_FILE)).is_file():
            return "the version has no int8 graph"
        if self.device != "cpu":
            return f"the model runs on {self.device}"
        return None

    def use_runtime(self, runtime: str) -> str:
        """Score with `runtime` ("fp32": PyTorch; "int8": the version's int8 graph where `int8_problem` is None, else
        fp32) and return the runtime in effect.

        Raises:
            InputError: `runtime` is not one of `nightshift_models.int8.RUNTIMES`.
        """
        if runtime not in RUNTIMES:
            raise InputError(f"runtime {runtime!r} (setting score.runtime): expected one of {', '.join(RUNTIMES)}")
        if runtime == "fp32" or self.int8_problem() is not None:
            self.session = None
        elif self.session is None:
            self.session = Int8Session(self.path / self.meta["int8"].get("file", INT8_FILE))
        return self.runtime

    @property
    def runtime(self) -> str:
        """What runs the forward pass now: `int8` (ONNX Runtime) or `fp32` (PyTorch; bf16 autocast on CUDA)."""
        return "int8" if self.session is not None else "fp32"

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def family(self) -> str:
        """What answers: `tfidf`, `embedding`, or a BERT classifier, its head reading [CLS] or the mean of the token vectors."""
        kind = self.meta.get("family", "bert")
        return f"bert-{getattr(self.model.config, 'nightshift_pooling', 'cls')}" if kind == "bert" else kind

    def param_schema(self):
        """The per-request params this version declares in its signature (defaults: the version's own values)."""
        from mlflow.types.schema import ParamSchema, ParamSpec

        specs = [ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE), ParamSpec("threshold", "double", None)]
        if self.rca is not None:
            specs.append(ParamSpec("kb_min_similarity", "double", None))
        return ParamSchema(specs)

    def signature(self, example: pd.DataFrame):
        """The model signature: input and output inferred from `example` and its prediction (the context columns
        optional), plus `param_schema`."""
        from mlflow.models import ModelSignature, infer_signature
        from mlflow.types.schema import ColSpec, Schema

        example = example[[text_problem(v) is None for v in example[FIELD]]]  # an unreadable row would be refused
        inferred = infer_signature(example, self.predict(None, example))
        inputs = Schema([ColSpec(c.type, c.name, required=c.name not in context_fields(self)) for c in inferred.inputs.inputs])
        return ModelSignature(inputs, inferred.outputs, params=self.param_schema())

    def options(self, params: dict[str, Any] | None) -> Options:
        """Validate the params of one request.

        Raises:
            MlflowException (INVALID_PARAMETER_VALUE): naming the param and its value.
        """
        params = params or {}
        batch_size = params.get("batch_size")
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise invalid(f"param 'batch_size': {batch_size!r} is not a whole number of texts >= 1")
        if self.rca is None and params.get("kb_min_similarity") is not None:
            raise invalid(f"param 'kb_min_similarity': {self.task} has no knowledge base")
        return Options(int(batch_size), _probability(params, "threshold"), _probability(params, "kb_min_similarity"))

    def probabilities(self, messages: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
                      context: Mapping[str, Sequence[object]] | None = None) -> np.ndarray:
        """Probabilities (N, K) for raw messages, normalised (and prefixed with the version's context
        fields, `context` giving their values per row) exactly as in training, by the family served."""
        texts = model_texts(messages, self.meta.get("context_fields", ()), context)
        if self.sklearn is not None:
            return family_proba(self.meta["family"], self.sklearn, texts, batch_size).astype(np.float32)
        from nightshift_models.bert import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, batch_size=batch_size,
                             max_length=self.meta["max_length"], device=self.device, session=self.session)

    def format(self, probs: np.ndarray, texts: Sequence[str] = (), options: Options = Options()) -> pd.DataFrame:
        """The task's output columns from probabilities (N, K) (and the texts, for the RCA knowledge-base fallback)."""
        if self.task == "log-anomaly":
            threshold = self.thresholds[0] if options.threshold is None else np.float32(options.threshold)
            return pd.DataFrame({"anomaly_score": probs[:, 0].astype(np.float64), "is_anomaly": probs[:, 0] >= threshold})
        if self.rca is not None:
            return self.rca.format(probs, texts, options.threshold, options.kb_min_similarity)
        raise InputError(f"unknown task {self.task!r} in {META_FILE}")

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One output row per input row (log-anomaly: anomaly_score, is_anomaly; failure-rca: `nightshift_models.root_cause_head.OUTPUT_COLUMNS`).

        Raises:
            MlflowException (INVALID_PARAMETER_VALUE): no `message` column, a row whose message is not text, a bad param.
        """
        if FIELD not in model_input.columns:
            raise invalid(f"input needs a '{FIELD}' column (the raw log text); got columns {list(model_input.columns)}")
        options = self.options(params)
        messages = check_messages(model_input[FIELD].tolist())
        context = {f: model_input[f].tolist() for f in context_fields(self) if f in model_input.columns}
        return self.format(self.probabilities(messages, options.batch_size, context), messages, options)
