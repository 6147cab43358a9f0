"""The ``method:`` block: every bad parameter is refused with a message that says what to change."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import Field

from adapter_registry.methods import (
    FAMILIES,
    METHOD_TYPES,
    SCHEMAS,
    MethodBlock,
    build_peft_config,
    method_builder,
    register_method,
    registered,
)
from adapter_registry.methods.bottleneck import BottleneckMethod
from adapter_registry.recipes import RecipeError, parse_recipe

from .tiny import CAUSAL, CLASSIFY, parse_method, recipe_dict

NOT_MERGEABLE = ["prefix_tuning", "prompt_tuning", "p_tuning", "llama_adapter"]
BAD = [
    ({"type": "lora", "r": 0}, r"method\.r: Input should be greater than or equal to 1"),
    ({"type": "lora", "rank_pattern": {"q_proj": 0}}, r"method\.rank_pattern\.q_proj: .*greater than or equal to 1"),
    ({"type": "qlora", "bits": 3}, r"method\.bits: Input should be 4 or 8"),
    ({"type": "lora_fa", "use_dora": True}, r"method\.use_dora: unknown key"),
    ({"type": "lora_fa", "alpha": 0}, r"method\.alpha: Input should be greater than 0"),
    ({"type": "adalora", "init_r": 4, "target_r": 8}, r"target_r \(8\) must not exceed init_r \(4\)"),
    ({"type": "adalora", "warmup_share": 0.5, "final_share": 0.5}, r"leaves no steps to re-allocate ranks"),
    ({"type": "adalora", "allocate_every": 0}, r"method\.allocate_every: .*greater than or equal to 1"),
    ({"type": "adalora", "beta1": 1.0}, r"method\.beta1: Input should be less than 1"),
    ({"type": "adalora", "orth_reg_weight": -1}, r"method\.orth_reg_weight: .*greater than or equal to 0"),
    ({"type": "ia3", "target_modules": ["k_proj"]}, r"give both target_modules and feedforward_modules"),
    (
        {"type": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
        r"feedforward_modules \['down_proj'\] are not in target_modules",
    ),
    (
        {"type": "ia3", "target_modules": "all-linear", "feedforward_modules": ["down_proj"]},
        r"method\.target_modules: give a non-empty list .* \(this method cannot take 'all-linear'\)",
    ),
    ({"type": "loha", "r": 0}, r"method\.r: .*greater than or equal to 1"),
    ({"type": "loha", "module_dropout": 1.0}, r"method\.module_dropout: Input should be less than 1"),
    ({"type": "lokr", "decompose_factor": 0}, r"decompose_factor must be -1 \(automatic\) or a positive integer"),
    ({"type": "vera", "d_initial": 0}, r"method\.d_initial: Input should be greater than 0"),
    ({"type": "vera", "target_modules": []}, r"method\.target_modules: give a non-empty list of module names"),
    ({"type": "lora", "target_modules": [""]}, r"method\.target_modules: give a non-empty list .* or 'all-linear'"),
    ({"type": "loha", "target_modules": "q_proj"}, r"a single module is a list too: \[NAME\] \(got 'q_proj'\)"),
    ({"type": "oft", "r": 4}, r"give exactly one of block_size or r \(got block_size=32, r=4\)"),
    ({"type": "oft", "block_size": 0}, r"give exactly one of block_size or r"),
    ({"type": "prefix_tuning", "encoder_hidden_size": 64}, r"encoder_hidden_size only applies with prefix_projection"),
    ({"type": "prefix_tuning", "num_virtual_tokens": 0}, r"method\.num_virtual_tokens: .*greater than or equal to 1"),
    ({"type": "prompt_tuning", "init": "text"}, r"method\.init: Input should be 'random' or 'sample_vocab'"),
    ({"type": "p_tuning", "encoder_type": "gru"}, r"method\.encoder_type: Input should be 'mlp' or 'lstm'"),
    ({"type": "llama_adapter", "adapter_layers": 0}, r"method\.adapter_layers: .*greater than or equal to 1"),
    ({"type": "llama_adapter", "adapter_len": 1000}, r"method\.adapter_len: .*less than or equal to 512"),
    ({"type": "prompt_tuning", "num_virtual_tokens": 4, "rr": 1}, r"method\.rr: unknown key"),
    ({"type": "lora", "family": "additive"}, r"method\.family: 'family' is a fact of the method, not a setting"),
    ({"type": "prefix_tuning", "mergeable": True}, r"method\.mergeable: 'mergeable' is a fact of the method"),
    ({"type": "bottleneck"}, r"bottleneck adapters \(Houlsby/Pfeiffer\) are not available: peft 0\.21 has none"),
    ({"type": "houlsby"}, r"method\.type: unknown type 'houlsby'\. Fix: use one of"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "message"), BAD, ids=[f"{m['type']}-{i}" for i, (m, _) in enumerate(BAD)])
def test_bad_parameter_is_refused_with_a_message(method: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_method(method)


@pytest.mark.parametrize("kind", NOT_MERGEABLE)
def test_merging_a_method_that_adds_no_weights_is_refused(kind: str) -> None:
    with pytest.raises(RecipeError, match=rf"method '{kind}' .*merge.*set merge\.enabled: false"):
        parse_recipe(recipe_dict({"type": kind}, merge=True))


@pytest.mark.parametrize("kind", [t for t in METHOD_TYPES if t not in NOT_MERGEABLE])
def test_mergeable_methods_may_merge(kind: str) -> None:
    assert parse_recipe(recipe_dict({"type": kind}, merge=True)).merge.enabled


def test_mixing_methods_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"method: one method per recipe, got a list \['lora', 'ia3'\]"):
        parse_recipe(recipe_dict([{"type": "lora"}, {"type": "ia3"}]))


@pytest.mark.parametrize("kind", METHOD_TYPES)
def test_each_method_is_one_registered_model_with_its_facts(kind: str) -> None:
    method = parse_method({"type": kind})
    builder = method_builder(kind)
    assert type(method) is builder.schema and builder.name == kind
    assert (method.family, method.mergeable) == (builder.family, builder.mergeable)
    assert builder.family in FAMILIES
    assert "family" not in method.model_dump() and "mergeable" not in method.model_dump()


def test_the_recipe_union_is_the_registered_methods_and_bottleneck() -> None:
    assert (*(b.schema for b in registered()), BottleneckMethod) == SCHEMAS
    assert [b.name for b in registered()] == list(METHOD_TYPES)
    assert len(set(METHOD_TYPES)) == len(METHOD_TYPES) and "bottleneck" not in METHOD_TYPES


def test_registering_a_type_twice_fails_loudly() -> None:
    class Again(MethodBlock):
        type: Literal["lora"]
        family: Literal["additive"] = Field("additive", exclude=True)
        mergeable: Literal[False] = Field(False, exclude=True)

    with pytest.raises(
        ValueError, match=r"PEFT method 'lora' is already registered by adapter_registry\.methods\.lora; give"
    ):
        register_method(Again, method_builder("lora").build)
    assert method_builder("lora").schema is not Again


def test_a_method_must_state_its_facts() -> None:
    class NoFacts(MethodBlock):
        type: Literal["no_facts"]

    class OddFamily(MethodBlock):
        type: Literal["odd_family"]
        family: Literal["sideways"] = Field("sideways", exclude=True)
        mergeable: Literal[False] = Field(False, exclude=True)

    build = method_builder("lora").build
    with pytest.raises(
        ValueError, match=r"NoFacts must state its facts as excluded fields, e\.g\. `family: "
    ):
        register_method(NoFacts, build)
    with pytest.raises(ValueError, match=r"family 'sideways' of 'odd_family' is not one of \('additive'"):
        register_method(OddFamily, build)
    assert not {"no_facts", "odd_family"} & {b.name for b in registered()}


@pytest.mark.parametrize("kind", ["llama_adapter", "prompt_tuning", "p_tuning", "qlora"])
def test_method_that_does_not_apply_to_the_task_says_why(kind: str) -> None:
    method = parse_method({"type": kind})
    problem = method.task_problem(CLASSIFY)
    assert problem is not None and problem.startswith(
        f"method {kind!r} does not apply to task {CLASSIFY!r}: "
    )
    assert method.task_problem(CAUSAL) is None


@pytest.mark.parametrize("kind", ["llama_adapter", "prompt_tuning", "p_tuning"])
def test_recipe_refuses_a_method_for_a_task_it_does_not_apply_to(kind: str) -> None:
    with pytest.raises(
        RecipeError, match=rf"method '{kind}' does not apply to task 'sequence_classification'"
    ):
        parse_recipe(recipe_dict({"type": kind}, CLASSIFY))


def test_adalora_needs_the_number_of_steps() -> None:
    method = parse_method({"type": "adalora"})
    with pytest.raises(ValueError, match=r"adalora needs the run's number of optimiser steps.*total_steps=N"):
        build_peft_config(method, CAUSAL)


def test_adalora_schedule_is_in_shares_of_the_run() -> None:
    method = parse_method({"type": "adalora", "warmup_share": 0.1, "final_share": 0.25, "allocate_every": 5})
    config = build_peft_config(method, CAUSAL, total_steps=200)
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (200, 20, 50, 5)


def test_total_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"total_steps must be a positive number of optimiser steps, got 0"):
        build_peft_config(parse_method({"type": "lora"}), CAUSAL, total_steps=0)
