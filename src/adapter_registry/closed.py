"""The base class of every block a user writes in a recipe: ``recipes`` and the ``method:`` blocks of ``methods``.

Ground floor: imports nothing of ours. (It sits outside both packages so that ``methods`` can use it without
importing the face of ``recipes``, whose ``schema`` imports ``methods``.)
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticUndefined


class Closed(BaseModel):
    """A block of a recipe: unknown keys are errors, values are checked on assignment too, and a boolean written
    for a number is an error (pydantic's lax mode would read ``r: true`` as ``r: 1``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="wrap")
    @classmethod
    def _no_boolean_numbers(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """Each boolean given for a number is an error of its key, reported with the block's other errors.

        (A model validator, not a ``field_validator("*")``: pydantic allows no field validator on the tag of a
        discriminated union.)"""
        ours: list[InitErrorDetails] = []
        for key, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(key)
            if field is None or not _boolean_for_number(field.annotation, value):
                continue
            example = f", e.g. {field.default!r} (the default)" if _is_number(field.default) else ""
            message = (
                "a number is expected, not a boolean (YAML reads true, false, yes, no, on and off as booleans). "
                f"Fix: write a number{example}"
            )
            ours.append(
                InitErrorDetails(
                    type="value_error", loc=(key,), input=value, ctx={"error": ValueError(message)}
                )
            )
        try:
            validated = handler(data)
        except ValidationError as exc:
            if not ours:
                raise
            keys = {e["loc"][0] for e in ours}  # pydantic's error about the coerced value would only confuse
            theirs: list[Any] = [e for e in exc.errors() if not (e["loc"] and e["loc"][0] in keys)]
            raise ValidationError.from_exception_data(cls.__name__, [*theirs, *ours]) from None
        if ours:
            raise ValidationError.from_exception_data(cls.__name__, ours)
        return validated


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value is not PydanticUndefined


def _kinds(annotation: Any) -> list[Any]:
    """The plain types an annotation allows, looking through Annotated, Optional and unions."""
    if get_origin(annotation) is Annotated:
        return _kinds(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [k for arg in get_args(annotation) for k in _kinds(arg)]
    return [annotation]


def _boolean_for_number(annotation: Any, value: Any) -> bool:
    """``value`` (or a member of it, for a list or dict of numbers) is a boolean where only numbers are allowed."""
    kinds = _kinds(annotation)
    if isinstance(value, bool):
        return any(k in (int, float) for k in kinds) and not any(k in (bool, Any) for k in kinds)
    for kind in kinds:
        args = get_args(kind)
        if isinstance(value, dict) and get_origin(kind) is dict and len(args) == 2:
            return any(_boolean_for_number(args[1], v) for v in value.values())
        if isinstance(value, list) and get_origin(kind) is list and args:
            return any(_boolean_for_number(args[0], v) for v in value)
    return False
