"""Errors of the training side whose message is meant for the user: the CLI prints them without a traceback."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class: a problem with the user's input (config, data, checkpoint), explained in the message."""


class ConfigError(TrainingError, ValueError):
    """A config or preset has unknown keys, values of the wrong type, or a preset name that does not exist."""


class UnknownMethodError(TrainingError, KeyError):
    """No method is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote its argument; this is a sentence
        return str(self.args[0])


class DataError(TrainingError, ValueError):
    """A dataset folder or file is missing, unreadable or in the wrong layout; the message names the file."""


class CheckpointError(TrainingError, ValueError):
    """A checkpoint is missing, truncated, corrupted or does not fit the method; the message names the file."""
