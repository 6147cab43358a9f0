"""Helpers of the method tests: tiny base configs, a recipe around a method, a pooled classifier, a short run.

No mocks: every method is built from a parsed recipe, wrapped by real peft, trained with real optimiser steps,
saved and reloaded from disk. Bases are a 2-layer Llama (causal_lm_sft) and a 2-layer BERT encoder
(sequence_classification: peft FEATURE_EXTRACTION plus a mean-pooled linear head outside peft).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from adapter_registry.methods import build_peft_config, optimizer_for, step_callback
from adapter_registry.recipes import parse_recipe

TINY_LLAMA = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
TINY_BERT = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=64,
)  # fmt: skip
CAUSAL, CLASSIFY = "causal_lm_sft", "sequence_classification"
NUM_LABELS = 3
STEPS = 6


def recipe_dict(method: Any, task: str = CAUSAL, merge: bool = False) -> dict[str, Any]:
    """A minimal valid recipe around a ``method:`` block."""
    causal = task == CAUSAL
    return {
        "name": "tiny",
        "base": {"offline": "smollm2-135m-instruct" if causal else "all-minilm-l6-v2"},
        "task": {"type": task},
        "data": {
            "format": "completion" if causal else "classification",
            "train": "a.jsonl",
            "test": "b.jsonl",
        },
        "method": method,
        "training": {"max_steps": STEPS},
        "evaluation": {"metrics": ["exact_match" if causal else "accuracy"]},
        "merge": {"enabled": merge},
    }


def parse_method(method: dict[str, Any], task: str = CAUSAL) -> Any:
    """The parsed ``method:`` block of a full recipe."""
    return parse_recipe(recipe_dict(method, task)).method


class Classifier(nn.Module):
    """encoder (peft-wrapped or not) → mean pooling → linear head."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


@dataclass
class Run:
    """A base of one task and a fixed batch: load, wrap, train, save and reload adapters on it."""

    task: str
    base_dir: Path
    quantization: Any = None

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(3, 128, (4, 10), generator=generator)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.attention_mask[0, -3:] = 0  # one padded row
        self.labels = torch.tensor([0, 1, 2, 1])
        torch.manual_seed(1)
        self.head = nn.Linear(TINY_BERT["hidden_size"], NUM_LABELS)

    def base(self) -> nn.Module:
        if self.task == CAUSAL:
            model = AutoModelForCausalLM.from_pretrained(
                self.base_dir, dtype=torch.float32, quantization_config=self.quantization
            )
        else:
            model = AutoModel.from_pretrained(self.base_dir, dtype=torch.float32)
        return model.eval()

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the logits come from: the model itself, or the classifier around the encoder."""
        return model if self.task == CAUSAL else Classifier(model, self.head)

    @torch.no_grad()
    def logits(self, model: nn.Module) -> torch.Tensor:
        model.eval()
        out = self.wrap(model)(input_ids=self.input_ids, attention_mask=self.attention_mask)
        return (out if self.task == CLASSIFY else out.logits).detach().clone()

    def loss(self, model: nn.Module) -> torch.Tensor:
        if self.task == CAUSAL:
            labels = self.input_ids.masked_fill(self.attention_mask == 0, -100)
            return model(input_ids=self.input_ids, attention_mask=self.attention_mask, labels=labels).loss
        logits = self.wrap(model)(input_ids=self.input_ids, attention_mask=self.attention_mask)
        return nn.functional.cross_entropy(logits, self.labels)

    def adapt(self, method: Any, steps: int = STEPS) -> PeftModel:
        config = build_peft_config(method, self.task, total_steps=steps)
        return get_peft_model(self.base(), config)

    def train(self, method: Any, model: PeftModel, steps: int = STEPS, lr: float = 2e-2) -> list[float]:
        """The loop's contract: optimizer_for (or AdamW), then step_callback after every optimizer step."""
        head = list(self.head.parameters()) if self.task == CLASSIFY else []
        optimizer = optimizer_for(method, model, lr, 0.0, head_parameters=head)
        if optimizer is None:
            params = [p for p in model.parameters() if p.requires_grad] + head
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        on_step: Callable[[int], None] | None = step_callback(method, model)
        losses = []
        model.train()
        for step in range(1, steps + 1):
            loss = self.loss(model)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step)
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
        model.eval()
        return losses

    def reload(self, folder: Path) -> PeftModel:
        return PeftModel.from_pretrained(self.base(), folder).eval()
