"""The base class of every block a user writes in a recipe: ``recipes`` and the ``method:`` blocks of ``methods``.

Ground floor: imports nothing of ours. (It sits outside both packages so that ``methods`` can use it without
importing the face of ``recipes``, whose ``schema`` imports ``methods``.)
"""

from pydantic import BaseModel, ConfigDict


class Closed(BaseModel):
    """A block of a recipe: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
