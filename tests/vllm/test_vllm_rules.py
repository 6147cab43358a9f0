"""vLLM's LoRA rules (vllm/lora/peft_helper.py, vllm/config/lora.py, the model's LoRA modules) applied to configs
that peft really writes, and to hand-written ones for the features peft rarely saves."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter_registry.adapter_folder import read_config
from adapter_registry.vllm.export import weight_keys
from adapter_registry.vllm.rules import (
    DEFAULT_MAX_LORA_RANK,
    MAX_LORA_RANKS,
    RULES,
    AdapterFacts,
    check,
    needed_max_lora_rank,
    refusal,
)

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


def failed(facts: AdapterFacts) -> dict[str, tuple[str, str]]:
    return {f.rule: (f.detail, f.fix) for f in check(facts) if not f.ok}


def folder_facts(folder: Path, **kw: object) -> AdapterFacts:
    return AdapterFacts(
        read_config(folder), architecture="LlamaForCausalLM", weight_keys=weight_keys(folder), **kw
    )  # type: ignore[arg-type]


def test_vllms_rank_values_and_default() -> None:
    assert DEFAULT_MAX_LORA_RANK == 16 and 16 in MAX_LORA_RANKS
    assert [needed_max_lora_rank(r) for r in (4, 16, 17, 48, 300, 4096)] == [8, 16, 32, 64, 320, 512]
    assert {r.name for r in RULES} >= {
        "peft type",
        "DoRA",
        "modules_to_save",
        "bias",
        "rank",
        "target modules",
    }


def test_a_plain_lora_saved_by_peft_passes_every_rule(lora_dirs: dict[str, Path]) -> None:
    findings = check(folder_facts(lora_dirs["one"]))
    assert all(f.ok for f in findings), refusal(findings)
    assert refusal(findings) == ""


def test_dora_is_refused_with_its_fix(lora_dirs: dict[str, Path]) -> None:
    problems = failed(folder_facts(lora_dirs["dora"]))
    assert set(problems) == {"DoRA", "weights"}  # use_dora, and the magnitude vectors in the weight file
    assert "use_dora=true" in problems["DoRA"][0] and "use_dora: false" in problems["DoRA"][1]
    assert "lora_magnitude_vector" in problems["weights"][0]


def test_rank_over_max_lora_rank_names_the_flag_that_fits(lora_dirs: dict[str, Path]) -> None:
    problems = failed(folder_facts(lora_dirs["wide"]))
    assert problems == {
        "rank": (
            "rank 32 is greater than --max-lora-rank 16",
            "start vLLM with --max-lora-rank 32 (memory per LoRA slot grows with it), or retrain with r <= 16",
        )
    }
    assert not failed(folder_facts(lora_dirs["wide"], max_lora_rank=32))
    unchecked = check(folder_facts(lora_dirs["wide"], max_lora_rank=None))
    assert all(f.ok for f in unchecked) and "not checked" in next(
        f.detail for f in unchecked if f.rule == "rank"
    )
    # rank_pattern raises a module's rank above r: vLLM compares the largest
    assert "rank 64" in failed(AdapterFacts({**LORA, "rank_pattern": {"q_proj": 64}}))["rank"][0]


def test_non_lora_peft_types_saved_by_peft_are_refused(vllm_base: Path, tmp_path: Path) -> None:
    from peft import IA3Config, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ia3 = get_peft_model(
        AutoModelForCausalLM.from_pretrained(vllm_base),
        IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    )
    ia3.save_pretrained(tmp_path / "ia3")
    prompt = get_peft_model(
        AutoModelForCausalLM.from_pretrained(vllm_base),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    prompt.save_pretrained(tmp_path / "prompt")  # fmt: skip

    ia3_problems = failed(folder_facts(tmp_path / "ia3"))
    assert ia3_problems["peft type"] == (
        "peft_type IA3: vLLM loads LoRA adapters only (peft_type LORA)",
        "retrain with `method: {type: lora}`, or merge it into the base (`merge.enabled: true`) and serve the "
        "merged model with vLLM as a model of its own",
    )
    prompt_problems = failed(folder_facts(tmp_path / "prompt"))
    assert "prompt-learning adapter" in prompt_problems["peft type"][0]
    assert prompt_problems["peft type"][1] == "retrain with `method: {type: lora}` in the recipe"


def test_modules_to_save_saved_by_peft_is_refused(vllm_base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(vllm_base),
        LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    model.save_pretrained(tmp_path / "mts")
    problems = failed(folder_facts(tmp_path / "mts"))
    assert problems["modules_to_save"][0].startswith("modules_to_save=['lm_head']")
    assert "retrain without modules_to_save" in problems["modules_to_save"][1]
    assert "base_model.model.lm_head.weight" in problems["weights"][0]  # the saved copy of lm_head


@pytest.mark.parametrize(
    ("config", "rule", "detail"),
    [
        ({**LORA, "bias": "all"}, "bias", "bias='all'"),
        ({**LORA, "lora_bias": True}, "bias", "lora_bias=true"),
        ({**LORA, "init_lora_weights": "pissa_niter_4"}, "init_lora_weights", "changes the base weights"),
        ({**LORA, "layer_replication": [[0, 2]]}, "LoRA variants", "layer_replication"),
        ({**LORA, "target_modules": ["q_proj", "score"]}, "target modules", "target module(s) ['score']"),
    ],
)
def test_features_vllm_does_not_implement(config: dict, rule: str, detail: str) -> None:
    problems = failed(AdapterFacts(config, architecture="LlamaForCausalLM"))
    assert set(problems) == {rule}
    assert detail in problems[rule][0] and problems[rule][1]


def test_classifiers_are_refused_and_unknown_architectures_are_not_guessed() -> None:
    problems = failed(AdapterFacts(LORA, task="sequence_classification", architecture="BertModel"))
    assert set(problems) == {"task"}
    assert "head.safetensors" in problems["task"][0]
    findings = {
        f.rule: f for f in check(AdapterFacts({**LORA, "target_modules": ["query"]}, architecture="GPTX"))
    }
    assert findings["target modules"].ok and "not checked for GPTX" in findings["target modules"].detail
