"""Errors of the export side whose message is meant for the user (``python -m export`` prints them, exit 2).

Verification failures are :class:`VerificationError`, which carries the report with the measured numbers
(the CLI prints them and exits 1).
"""

from __future__ import annotations

from typing import Any


class ExportError(Exception):
    """An export cannot be done as asked: the message says what was wrong (file, option, graph node)."""


class VerificationError(ExportError):
    """The exported model does not reproduce the torch inference net within the tolerances.

    ``report`` is the ``verify.json`` content: every measured number and the threshold it failed.
    """

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


class TensorRTUnavailableError(ExportError):
    """The ``tensorrt`` Python package (or a GPU it can use) is missing; the message names the extra to install."""
