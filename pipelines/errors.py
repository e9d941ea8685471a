"""Errors shared by several stages. Every error nightshift raises on purpose derives from `NightshiftError`
(defined in the shipped package, `nightshift_models.errors`); each stage's own errors live beside it."""

from __future__ import annotations

from nightshift_models.errors import InputError, MissingInput, NightshiftError

__all__ = ["InputError", "MissingInput", "NightFailed", "NightshiftError", "PromotionError", "TrainingDataError"]


class TrainingDataError(NightshiftError, ValueError):
    """The snapshot cannot train a model; the message names the snapshot and field."""


class PromotionError(NightshiftError, RuntimeError):
    """The gate, a rollback or an alias move cannot run; the message says what is missing."""


class NightFailed(NightshiftError, RuntimeError):
    """A night run through Airflow failed; the message holds the last lines of its log."""
