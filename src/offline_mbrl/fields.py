"""What configurations and command lines share: constrained field types, the frozen model
base, and the one parser of boolean flags. Light on purpose (no torch), so that scripts
can build their parsers before anything heavy is imported."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from offline_mbrl.renames import current_names

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


class Frozen(BaseModel):
    """A validated, immutable configuration whose field docstrings become the CLI help."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    renamed: ClassVar[Mapping[str, str]] = {}
    """Old field names -> current ones: the old ones are accepted as input (command-line
    aliases, file keys, keyword arguments) and never written (see offline_mbrl.renames)."""

    @model_validator(mode="before")
    @classmethod
    def _current_names(cls, values: Any) -> Any:
        if cls.renamed and isinstance(values, Mapping):
            return current_names(values, cls.renamed)
        return values


def parse_bool(text: str | bool) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``y/n``, ``on/off`` (any case) -> bool."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
