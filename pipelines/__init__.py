"""nightshift: the stages of the nightly continuous-training flow."""

__version__ = "0.1.0"
