"""What every ``method:`` block shares: the base model, the module-list types and the tasks a method applies to.

Each method module (``lora``, ``ia3`` …) defines its block on :class:`MethodBlock`, one closed model per method
type, every field with a description. ``family`` and ``mergeable`` are fixed facts of the method, stated once on
its model (not user keys: left out of dumps and so out of the recipe hash); the registry reads them from there.

:meth:`MethodBlock.task_problem` says whether a method applies to a task; the recipe refuses the pair when it
does not (e.g. LLaMA-Adapter on an encoder).

Ground floor: imports nothing of ours but ``closed``, and neither peft nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from adapter_registry.closed import Closed

CAUSAL_ONLY = frozenset({"causal_lm_sft"})
ALL_TASKS = frozenset({"causal_lm_sft", "sequence_classification"})


def module_names(value: Any, all_linear: bool = True) -> Any:
    """One clear message for a bad module list (instead of one per member of the type union)."""
    if value is None or (all_linear and value == "all-linear"):
        return value
    if isinstance(value, list) and value and all(isinstance(n, str) and n for n in value):
        return value
    also = " or 'all-linear'" if all_linear else " (this method cannot take 'all-linear')"
    hint = (
        "; a single module is a list too: [NAME]" if isinstance(value, str) and value != "all-linear" else ""
    )
    raise ValueError(f"give a non-empty list of module names, e.g. [q_proj, v_proj]{also}{hint}")


ModuleNames = Annotated[list[str], BeforeValidator(lambda v: module_names(v, all_linear=False))]
TargetModules = Annotated[
    ModuleNames | Literal["all-linear"] | None,
    BeforeValidator(module_names),
    Field(
        description="module names (or name suffixes) to adapt, 'all-linear', or null for peft's default "
        "for the architecture (attention query and value projections)"
    ),
]
RankPattern = dict[str, Annotated[int, Field(ge=1)]]
AlphaPattern = dict[str, Annotated[float, Field(gt=0)]]


class MethodBlock(Closed):
    """What every ``method:`` block shares: fixed facts that are not user keys, and the tasks it applies to.

    A method's model states ``type: Literal[NAME]`` and its two facts, e.g.
    ``family: Literal["additive"] = Field("additive", exclude=True)`` and
    ``mergeable: Literal[False] = Field(False, exclude=True)`` (``family`` is one of ``registry.FAMILIES``).
    """

    TASKS: ClassVar[frozenset[str]] = ALL_TASKS
    TASK_REASON: ClassVar[str] = ""

    # stated by every method's model (as pydantic fields); declared here for the type checker only
    if TYPE_CHECKING:
        type: str
        family: str
        mergeable: bool

    @field_validator("family", "mergeable", mode="before", check_fields=False)
    @classmethod
    def _facts_are_not_keys(cls, value: Any, info: ValidationInfo) -> Any:
        # runs only when a recipe gives the key: the defaults are not validated
        raise ValueError(f"'{info.field_name}' is a fact of the method, not a setting; remove it")

    def task_problem(self, task: str) -> str | None:
        """Why this method cannot train ``task`` (a message that says what to change), or None when it can."""
        if task in self.TASKS:
            return None
        method = getattr(self, "type", "?")
        return f"method {method!r} does not apply to task {task!r}: {self.TASK_REASON}"
