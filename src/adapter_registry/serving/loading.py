"""What the pool loads, read and checked before it serves anything: an adapter folder's LoRA matrices against the
base's layers (plain LoRA only), its serving contract against this server (task, the base's quantisation), its
closed answer set; and the bitsandbytes config a quantised base is loaded with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapter_registry.adapter_folder import (
    AdapterFolderError,
    lora_scaling,
    parse_lora_key,
    read_config,
    read_weights,
)
from adapter_registry.contract import QUANTIZATIONS, ContractError, ServingContract, contract_of
from adapter_registry.decoding import AnswerConstraint
from adapter_registry.serving.entities import NotForThisServer, PoolError
from adapter_registry.serving.lora_layer import PooledLinear

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# LoraConfig fields the pool cannot apply, with the value that means "not used"
_UNSUPPORTED: dict[str, Any] = {
    "use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "trainable_token_indices": None, "alora_invocation_tokens": None, "use_qalora": False,
    "layer_replication": None, "target_parameters": None, "megatron_config": None,
}  # fmt: skip


def bitsandbytes_config(quantization: str) -> Any:
    """transformers' BitsAndBytesConfig for a quantisation name (see ``contract.QUANTIZATIONS``); None for ""."""
    if not quantization:
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    quant_type, _, double = quantization.partition("-")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=bool(double),
        bnb_4bit_compute_dtype=torch.float32,
    )  # fmt: skip


def _lora_config(folder: Path) -> dict[str, Any]:
    try:
        config = read_config(folder)
    except AdapterFolderError as exc:
        raise PoolError(str(exc)) from exc
    if config.get("peft_type") != "LORA":
        raise PoolError(
            f"{folder}: peft_type {config.get('peft_type')!r} is not served; the pool serves LORA"
        )
    for key, unused in _UNSUPPORTED.items():
        value = config.get(key, unused)
        if value not in (unused, [], {}) and not (unused is None and not value):
            raise PoolError(f"{folder}: {key}={value!r} is not served by the pool (plain LoRA only)")
    return config


def lora_weights(folder: Path, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """The adapter's (A, B, scaling) per base module name, checked against the base's shapes."""
    config = _lora_config(folder)
    try:
        tensors = read_weights(folder)
    except AdapterFolderError as exc:
        raise PoolError(str(exc)) from exc
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        parsed = parse_lora_key(key)
        if parsed is None or parsed.part not in ("lora_A", "lora_B"):
            raise PoolError(f"{folder}: weight {key!r} is not a LoRA A/B matrix of a linear layer")
        pairs.setdefault(parsed.module, {})[parsed.part[-1]] = tensor
    if not pairs:
        raise PoolError(f"{folder}: the adapter holds no LoRA weights")
    modules = dict(model.named_modules())
    out = {}
    for module, ab in pairs.items():
        target = modules.get(module)
        if isinstance(target, PooledLinear):
            target = target.base
        if not isinstance(target, nn.Linear):
            raise PoolError(
                f"{folder}: {module!r} is not a linear layer of this base ({type(target).__name__})"
            )
        if set(ab) != {"A", "B"}:
            raise PoolError(f"{folder}: {module!r} lacks its lora_{'B' if 'A' in ab else 'A'} matrix")
        a, b = ab["A"], ab["B"]
        if a.shape[1] != target.in_features or b.shape[0] != target.out_features or a.shape[0] != b.shape[1]:
            raise PoolError(
                f"{folder}: {module!r} has A {tuple(a.shape)} and B {tuple(b.shape)}, which do not fit "
                f"a {target.in_features}->{target.out_features} layer: was it trained on another base?"
            )
        dtype = target.weight.dtype if target.weight.is_floating_point() else torch.float32  # 4/8-bit base
        out[module] = (
            a.to(dtype).contiguous(),
            b.to(dtype).contiguous(),
            lora_scaling(config, module, a.shape[0]),
        )
    return out


def served_contract(folder: Path, quantization: str) -> ServingContract:
    """The adapter's serving contract (a stand-in naming what is missing for a folder without one)."""
    try:
        contract = contract_of(folder)
    except ContractError as exc:
        raise PoolError(f"{folder}: {exc}") from exc
    if contract.task != "causal_lm_sft":
        raise NotForThisServer(f"{folder}: task {contract.task!r} is not served (the pool generates text)")
    if contract.base_quantization != quantization:
        evaluated = contract.base_quantization or "full precision"
        served = quantization or "full precision"
        fix = (
            f"--quantization {contract.base_quantization}"
            if contract.base_quantization
            else "no --quantization"
        )
        raise NotForThisServer(
            f"{folder}: it was evaluated on the base in {evaluated} and this server runs it in {served}: its "
            f"answers would differ from the evaluated ones; serve it from a server started with {fix}"
        )
    return contract


def answer_constraint(
    folder: Path, contract: ServingContract, tokenizer: PreTrainedTokenizerBase
) -> AnswerConstraint | None:
    """The adapter's closed answer set; None if it decodes freely. Call it holding the pool's tokenizer lock."""
    if contract.decoding != "constrained":
        return None
    try:
        return AnswerConstraint.build(contract.answers, tokenizer, contract.answer_separator)
    except ValueError as exc:
        raise PoolError(f"{folder}: {exc}") from exc
