"""The ``method:`` block of a recipe: one closed model per PEFT method, chosen by ``type``.

Each model documents its fields; ``family`` and ``mergeable`` are fixed facts of the method (not user keys,
left out of dumps and so out of the recipe hash). ``family`` follows the field's taxonomy:

- ``additive``: new parameters beside the frozen model (soft prompts, prefixes, adaption prompts, IA³,
  bottleneck adapters);
- ``selective``: a chosen subset of the model's own weights is trained (none shipped yet);
- ``reparameterisation``: a low-rank or structured update of existing weights (LoRA and its relatives);
- ``hybrid``: a combination of the above (none shipped yet).

One recipe trains one method. ``method:`` is a single mapping; a list (mixing methods, e.g. LoRA + IA³ in one
adapter) is refused with an explanation, because peft's mixed models cannot be saved, merged or served like a
single adapter and the methods' interactions are untested here.

:meth:`MethodBlock.task_problem` says whether a method applies to a task; the recipe refuses the pair when it
does not (e.g. LLaMA-Adapter on an encoder).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from adapter_registry.recipes.base import Closed

PEFT_DOCS = "https://huggingface.co/docs/peft"
CAUSAL_ONLY = frozenset({"causal_lm_sft"})
ALL_TASKS = frozenset({"causal_lm_sft", "sequence_classification"})


def _module_names(value: Any, all_linear: bool = True) -> Any:
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


ModuleNames = Annotated[list[str], BeforeValidator(lambda v: _module_names(v, all_linear=False))]
TargetModules = Annotated[
    ModuleNames | Literal["all-linear"] | None,
    BeforeValidator(_module_names),
    Field(
        description="module names (or name suffixes) to adapt, 'all-linear', or null for peft's default "
        "for the architecture (attention query and value projections)"
    ),
]
RankPattern = dict[str, Annotated[int, Field(ge=1)]]
AlphaPattern = dict[str, Annotated[float, Field(gt=0)]]


class MethodBlock(Closed):
    """What every ``method:`` block shares: fixed facts that are not user keys, and the tasks it applies to."""

    TASKS: ClassVar[frozenset[str]] = ALL_TASKS
    TASK_REASON: ClassVar[str] = ""

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


# --------------------------------------------------------------------------------------------- LoRA family
class _LowRank(MethodBlock):
    """Fields shared by LoRA, QLoRA and LoRA-FA."""

    r: int = Field(16, ge=1, le=1024, description="rank; higher: more capacity, more memory")
    alpha: float = Field(32, gt=0, description="scaling numerator (update scaled by alpha/r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: Annotated[list[str] | Literal["all-linear"], BeforeValidator(_module_names)] = Field(
        "all-linear", description="module names to adapt, or all-linear"
    )
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r)")
    rank_pattern: RankPattern = Field(
        default_factory=dict, description="per-module rank overrides, e.g. {'down_proj': 32}"
    )
    alpha_pattern: AlphaPattern = Field(
        default_factory=dict, description="per-module alpha overrides, e.g. {'down_proj': 64}"
    )


class LoraMethod(_LowRank):
    """LoRA: low-rank updates B·A added to the targeted linear layers."""

    type: Literal["lora"]
    use_dora: bool = Field(False, description="DoRA: decompose into magnitude and direction")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA on a base quantised by bitsandbytes (4-bit NF4/FP4 or 8-bit)."""

    TASKS: ClassVar[frozenset[str]] = CAUSAL_ONLY
    TASK_REASON: ClassVar[str] = "qlora is for causal LMs here; use type: lora for sequence_classification"

    type: Literal["qlora"]  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="4 (NF4/FP4) or 8 (LLM.int8) bit base")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="quantise the quantisation constants too")


class LoraFaMethod(_LowRank):
    """LoRA-FA: LoRA with the A matrices frozen at their random init; only B trains.

    Trained with peft's LoRA-FA optimizer (``peft.optimizers.create_lorafa_optimizer``), which freezes A and
    projects B's gradient so that the frozen-A update best approximates full LoRA's. The saved adapter is a
    plain LoRA adapter (loads, merges and serves like one).
    """

    type: Literal["lora_fa"]

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class AdaLoraMethod(MethodBlock):
    """AdaLoRA: SVD-shaped LoRA whose rank budget is pruned from init_r to target_r during training.

    The schedule is in shares of the run's total steps, so it holds for any length of run: ranks stay at
    init_r for the first ``warmup_share``, shrink towards ``target_r`` (every ``allocate_every`` steps), and
    stay fixed for the last ``final_share``.
    """

    type: Literal["adalora"]
    init_r: int = Field(12, ge=1, le=1024, description="starting rank of every adapted layer")
    target_r: int = Field(8, ge=1, le=1024, description="average rank left after pruning (the budget)")
    alpha: float = Field(32, gt=0, description="scaling numerator (update scaled by alpha/init_r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: TargetModules = None
    warmup_share: float = Field(
        0.1, ge=0, lt=1, description="share of steps trained at init_r before pruning starts (peft tinit)"
    )
    final_share: float = Field(
        0.2, ge=0, lt=1, description="share of final steps with the ranks frozen (peft tfinal)"
    )
    allocate_every: int = Field(1, ge=1, description="steps between two rank re-allocations (peft deltaT)")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) scores")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty")
    orth_reg_weight: float = Field(
        0.5, ge=0, description="weight of the orthogonality penalty on P and Q (added to a causal LM's loss)"
    )

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _schedule(self) -> AdaLoraMethod:
        if self.target_r > self.init_r:
            raise ValueError(
                f"target_r ({self.target_r}) must not exceed init_r ({self.init_r}): AdaLoRA only prunes; "
                "raise init_r or lower target_r"
            )
        if self.warmup_share + self.final_share >= 1:
            raise ValueError(
                f"warmup_share + final_share = {self.warmup_share + self.final_share:g} leaves no steps to "
                "re-allocate ranks; keep their sum below 1 (e.g. warmup_share: 0.1, final_share: 0.2)"
            )
        return self


class LohaMethod(MethodBlock):
    """LoHa: the update is the Hadamard product of two low-rank products (LyCORIS)."""

    type: Literal["loha"]
    r: int = Field(8, ge=1, le=1024, description="rank of each of the two factors; higher: more capacity")
    alpha: float = Field(8, gt=0, description="scaling numerator (update scaled by alpha/r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each rank during training")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a whole adapted layer")
    target_modules: TargetModules = None
    rank_pattern: RankPattern = Field(default_factory=dict, description="per-module rank overrides")
    alpha_pattern: AlphaPattern = Field(default_factory=dict, description="per-module alpha overrides")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class LokrMethod(MethodBlock):
    """LoKr: the update is a Kronecker product of a small matrix and a (low-rank) matrix (LyCORIS)."""

    type: Literal["lokr"]
    r: int = Field(8, ge=1, le=1024, description="rank of the low-rank Kronecker factor")
    alpha: float = Field(8, gt=0, description="scaling numerator (update scaled by alpha/r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each rank during training")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a whole adapted layer")
    decompose_both: bool = Field(False, description="low-rank factorise the left Kronecker factor too")
    decompose_factor: int = Field(
        -1,
        description="split of the layer's dimensions into the Kronecker factors; -1: as square as possible",
    )
    target_modules: TargetModules = None
    rank_pattern: RankPattern = Field(default_factory=dict, description="per-module rank overrides")
    alpha_pattern: AlphaPattern = Field(default_factory=dict, description="per-module alpha overrides")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _factor(self) -> LokrMethod:
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(
                f"decompose_factor must be -1 (automatic) or a positive integer, got {self.decompose_factor}"
            )
        return self


class VeraMethod(MethodBlock):
    """VeRA: one pair of frozen random matrices shared by all layers; only per-layer scaling vectors train."""

    type: Literal["vera"]
    r: int = Field(
        256, ge=1, le=4096, description="rank of the shared random projections (cheap: they are frozen)"
    )
    d_initial: float = Field(0.1, gt=0, description="initial value of the trainable vector d")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    projection_prng_key: int = Field(0, ge=0, description="seed of the shared random projections")
    save_projection: bool = Field(
        True, description="store the random projections in the adapter (bigger, but exactly reproducible)"
    )
    target_modules: TargetModules = None

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class OftMethod(MethodBlock):
    """OFT: multiply the targeted weights by a learned block-diagonal orthogonal matrix."""

    type: Literal["oft"]
    block_size: int = Field(
        32, ge=0, description="size of each orthogonal block; must divide the layer's input size (0: use r)"
    )
    r: int = Field(0, ge=0, description="number of blocks instead of their size (0: use block_size)")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a block during training")
    coft: bool = Field(False, description="constrained OFT: keep the rotation within eps of the identity")
    eps: float = Field(6e-5, gt=0, description="COFT's bound on the rotation (only with coft: true)")
    block_share: bool = Field(False, description="one orthogonal block shared across the layer")
    use_cayley_neumann: bool = Field(
        True, description="approximate the Cayley transform by a Neumann series (faster)"
    )
    num_cayley_neumann_terms: int = Field(5, ge=1, description="terms of that Neumann series")
    target_modules: TargetModules = None

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _one_size(self) -> OftMethod:
        if (self.r == 0) == (self.block_size == 0):
            raise ValueError(
                f"give exactly one of block_size or r (got block_size={self.block_size}, r={self.r}); "
                "for example `block_size: 32, r: 0`"
            )
        return self


class Ia3Method(MethodBlock):
    """IA³: learned vectors rescale the targeted activations (keys, values and the FFN input)."""

    type: Literal["ia3"]
    target_modules: ModuleNames | None = Field(
        None,
        description="modules whose output (or, for feedforward_modules, input) is rescaled; "
        "null: peft's default for the architecture (keys, values, FFN down projection)",
    )
    feedforward_modules: ModuleNames | None = Field(
        None, description="the subset of target_modules whose input is rescaled (the FFN's down projection)"
    )

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _feedforward_subset(self) -> Ia3Method:
        if (self.target_modules is None) != (self.feedforward_modules is None):
            raise ValueError(
                "give both target_modules and feedforward_modules, or neither (peft's default for the architecture)"
            )
        extra = sorted(set(self.feedforward_modules or ()) - set(self.target_modules or ()))
        if extra:
            raise ValueError(f"feedforward_modules {extra} are not in target_modules; add them there too")
        return self


# --------------------------------------------------------------------------------------------- prompts
_PROMPT_TASK_REASON = (
    "it prepends virtual tokens to the encoder's output, which the pooling head would read as text; "
    "use prefix_tuning (same sequence length) or a LoRA-family method"
)


class PrefixTuningMethod(MethodBlock):
    """Prefix tuning: trained key/value prefixes in every attention layer."""

    type: Literal["prefix_tuning"]
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="prefix length, in virtual tokens")
    prefix_projection: bool = Field(
        False,
        description="reparameterise the prefix through an MLP while training (more stable, more memory)",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="hidden size of that MLP (only with prefix_projection); null: the model's"
    )

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)

    @model_validator(mode="after")
    def _projection(self) -> PrefixTuningMethod:
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError(
                "encoder_hidden_size only applies with prefix_projection: true; set it or drop the size"
            )
        return self


class PromptTuningMethod(MethodBlock):
    """Prompt tuning: trained soft-prompt embeddings prepended to the input."""

    TASKS: ClassVar[frozenset[str]] = CAUSAL_ONLY
    TASK_REASON: ClassVar[str] = _PROMPT_TASK_REASON

    type: Literal["prompt_tuning"]
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="soft-prompt length, in virtual tokens")
    init: Literal["random", "sample_vocab"] = Field(
        "sample_vocab", description="start from random vectors or from embeddings of random vocabulary tokens"
    )

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)


class PTuningMethod(MethodBlock):
    """P-tuning: soft-prompt embeddings produced by a small trained encoder (MLP or LSTM)."""

    TASKS: ClassVar[frozenset[str]] = CAUSAL_ONLY
    TASK_REASON: ClassVar[str] = _PROMPT_TASK_REASON

    type: Literal["p_tuning"]
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="soft-prompt length, in virtual tokens")
    encoder_type: Literal["mlp", "lstm"] = Field("mlp", description="the prompt encoder")
    encoder_hidden_size: int = Field(128, ge=1, description="hidden size of the prompt encoder")
    encoder_num_layers: int = Field(2, ge=1, le=8, description="layers of the prompt encoder")
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the prompt encoder")

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)


class LlamaAdapterMethod(MethodBlock):
    """LLaMA-Adapter (peft adaption prompt): gated, zero-initialised prompts in the top decoder layers.

    Llama-architecture causal LMs only (peft also accepts Mistral and GPT-2); SmolLM2 is a Llama.
    """

    TASKS: ClassVar[frozenset[str]] = CAUSAL_ONLY
    TASK_REASON: ClassVar[str] = (
        "LLaMA-Adapter adapts Llama decoder attention; use a LoRA-family method or prefix_tuning"
    )

    type: Literal["llama_adapter"]
    adapter_len: int = Field(10, ge=1, le=512, description="adaption-prompt length per layer, in tokens")
    adapter_layers: int = Field(
        8,
        ge=1,
        description="the top N decoder layers get a prompt; at most the base's layers (SmolLM2-135M: 30)",
    )

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)


class BottleneckMethod(MethodBlock):
    """Bottleneck adapters (Houlsby, Pfeiffer): not available here; the block is an error that says why."""

    type: Literal["bottleneck"]

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _unavailable(cls, data: Any) -> Any:
        raise ValueError(
            "bottleneck adapters (Houlsby/Pfeiffer) are not available: peft 0.21 has none, and the `adapters` "
            "library (1.3.0) requires transformers ~=4.57.6, which cannot be installed beside our "
            "transformers 5.23. Fix: use an additive method (ia3, prefix_tuning, llama_adapter) or lora; "
            "see docs/methods.md"
        )


_METHODS = (
    LoraMethod | QLoraMethod | LoraFaMethod | AdaLoraMethod | LohaMethod | LokrMethod | VeraMethod | OftMethod
    | Ia3Method | PrefixTuningMethod | PromptTuningMethod | PTuningMethod | LlamaAdapterMethod | BottleneckMethod
)  # fmt: skip


def _one_method(value: Any) -> Any:
    if isinstance(value, list):
        kinds = [v.get("type", "?") if isinstance(v, dict) else v for v in value]
        raise ValueError(
            f"one method per recipe, got a list {kinds}: mixing PEFT methods in one adapter is not supported "
            "(their interactions are a known trap, and a mixed adapter cannot be merged or served like one); "
            "write `method: {type: ...}` with a single method, or train one recipe per method"
        )
    return value


MethodSpec = Annotated[_METHODS, Field(discriminator="type"), BeforeValidator(_one_method)]
"""A recipe's ``method:`` block: exactly one of the models above, chosen by ``type``."""

METHOD_TYPES: tuple[str, ...] = tuple(
    m.model_fields["type"].annotation.__args__[0] for m in _METHODS.__args__ if m is not BottleneckMethod
)
"""The method types a recipe can train (``bottleneck`` is only an explanatory error)."""
