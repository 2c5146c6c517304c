"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from models import ArchError, CheckpointError, HeadError, TextEncoderError

__all__ = ["USER_ERRORS", "UserError"]


class UserError(Exception):
    """Bad input from the user: the message says what is wrong, where, and how to fix it."""


# Exception types whose message is meant for the user as it stands (no traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ArchError, CheckpointError, HeadError, TextEncoderError)
