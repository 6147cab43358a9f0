"""The base class of every recipe block."""

from pydantic import BaseModel, ConfigDict


class Closed(BaseModel):
    """A block of a recipe: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
