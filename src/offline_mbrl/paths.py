"""Paths built from user-given names, confined to the directory they belong in."""

from __future__ import annotations

from pathlib import Path

from offline_mbrl.errors import UserError


def child_path(root: Path, name: str, what: str, flag: str) -> Path:
    """``root / name``, refused unless it stays inside ``root``.

    Names come from the command line (``--exp_name``, dataset and environment names), and a
    path is created, overwritten or deleted from them: ``..``, an absolute name or a
    leading ``~`` must not reach outside the user's directories.

    Args:
        root: the directory the name belongs in (experiments, models, datasets).
        name: the user-given part (may contain ``/`` for nested names such as ``ALE/Pong``).
        what: what the name names, for the message (``experiment name``).
        flag: the option to fix (``--exp_name``).

    Raises:
        UserError: the name is empty or leaves ``root``.
    """
    parts = Path(name).parts
    if not name.strip() or not parts or Path(name).is_absolute() or name.startswith("~") \
            or any(part in ("..", ".") for part in parts):
        raise UserError(f"{what} {name!r} must be a plain name inside {root}: pass {flag} "
                        "without '..', '.', '~' or a leading '/'")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{what} {name!r} leads outside {root}: pass a plain name to {flag}")
    return path
