"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""

from __future__ import annotations


class DytuneError(Exception):
    """Bad input or an unmet requirement: the message says what was wrong and what to do."""
