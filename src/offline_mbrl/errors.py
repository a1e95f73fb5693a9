"""User-facing errors.

A :class:`UserError` is raised for anything the user can fix (bad flags, missing
files, unavailable devices). The command-line front end prints its message on one
line and exits with status 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, with a message that names the fix.

    The message must be a single line: what is wrong, then what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class NonFiniteError(UserError):
    """A loss or parameter became NaN or infinite during training."""


def validation_message(error: Exception) -> str:
    """One line naming each offending field of a pydantic ``ValidationError``."""
    parts = []
    for item in error.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
