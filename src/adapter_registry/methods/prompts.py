"""Soft prompts: prefix tuning, prompt tuning, P-tuning and LLaMA-Adapter (peft's adaption prompt).

None of them can be merged: their parameters are extra tokens or key/value prefixes, not weight updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import CAUSAL_ONLY, MethodBlock

if TYPE_CHECKING:
    from peft import (
        AdaptionPromptConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
    )

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


def prefix_tuning_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> PrefixTuningConfig:
    """peft ``PrefixTuningConfig`` from a recipe's prefix_tuning block."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.prefix_projection,
        encoder_hidden_size=method.encoder_hidden_size,
    )


def prompt_tuning_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> PromptTuningConfig:
    """peft ``PromptTuningConfig`` from a recipe's prompt_tuning block."""
    from peft import PromptTuningConfig, PromptTuningInit

    return PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit[method.init.upper()],
    )


def p_tuning_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> PromptEncoderConfig:
    """peft ``PromptEncoderConfig`` from a recipe's p_tuning block."""
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    return PromptEncoderConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType[method.encoder_type.upper()],
        encoder_hidden_size=method.encoder_hidden_size,
        encoder_num_layers=method.encoder_num_layers,
        encoder_dropout=method.encoder_dropout,
    )


def llama_adapter_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> AdaptionPromptConfig:
    """peft ``AdaptionPromptConfig`` from a recipe's llama_adapter block (Llama-architecture causal LMs)."""
    from peft import AdaptionPromptConfig

    return AdaptionPromptConfig(
        task_type=task_type, adapter_len=method.adapter_len, adapter_layers=method.adapter_layers
    )


register_method(PrefixTuningMethod, prefix_tuning_config)
register_method(PromptTuningMethod, prompt_tuning_config)
register_method(PTuningMethod, p_tuning_config)
register_method(LlamaAdapterMethod, llama_adapter_config)
