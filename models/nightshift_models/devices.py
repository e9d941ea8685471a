"""Where a model runs: `pick_device`, the one reading of the `device` settings (torch only, so that the forecaster
never imports transformers)."""

from __future__ import annotations

import torch

from nightshift_models.errors import InputError


def pick_device(preference: str = "auto", setting: str = "train.device") -> str:
    """'cuda' when asked for (`preference` "cuda") or available ("auto"), else 'cpu'.

    Raises:
        InputError: "cuda" was asked for by `setting` and no CUDA device is available.
    """
    if preference == "cpu":
        return "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise InputError(f"setting {setting}=cuda, but no CUDA device is available")
    return "cuda" if torch.cuda.is_available() else "cpu"
