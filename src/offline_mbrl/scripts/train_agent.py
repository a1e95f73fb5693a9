"""Seed-compatible script: `python src/offline_mbrl/scripts/train_agent.py --help`."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from offline_mbrl.cli import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, prog="train_agent.py")


if __name__ == "__main__":
    sys.exit(main())
