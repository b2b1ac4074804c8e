"""Exceptions raised by ``lightning_losses``."""

from __future__ import annotations

__all__ = ["ConfigurationError", "AccumulationWarning"]


class ConfigurationError(ValueError):
    """A component, argument or recipe value is invalid.

    Raised at construction time, before any training starts. The message names the offending key in backticks,
    what was expected and what arrived, and, for names, the nearest valid option.
    """


class AccumulationWarning(UserWarning):
    """Objective terms computed over the whole batch meet gradient accumulation: each micro-batch is its own batch
    (issued once per fit, naming the terms; see :mod:`lightning_losses._accumulation`)."""
