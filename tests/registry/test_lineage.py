"""Lineage tags: written from plain facts and read back by the same module (no store needed)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

from adapter_registry.recipes.schema import Gate
from adapter_registry.registry.entities import AdapterVersion, DatasetRef, Tag
from adapter_registry.registry.lineage import (
    COMPOSED,
    MAX_TAG,
    LineageFacts,
    datasets_of,
    gates_of,
    lineage_tags,
    must_beat_base,
)

FACTS = LineageFacts(
    recipe_name="support",
    recipe_hash="ab" * 32,
    task="causal_lm_sft",
    method=None,
    method_family=None,
    peft_config={"r": 4, "peft_type": "LORA"},
    trainable_params=123,
    total_params=4567,
    trainable_share=123 / 4567,
    base_id="smollm2-135m-instruct",
    base_revision="",
    base_fingerprint="sha256:" + "f" * 64,
    base_architecture="LlamaForCausalLM",
    base_shapes={"vocab_size": 128, "hidden_size": 32},
    git_commit="0123456789abcdef0123456789abcdef01234567",
    git_dirty=True,
    validation={
        "success": True,
        "statistics": {"n": 3},
        "failures": [f"f{i}" for i in range(8)],
        "summary": "-",
    },
    data_versions={
        "test": {"path": "data/test.jsonl", "md5": "m2", "lock_commit": "c" * 40},
        "train": {"path": "data/train.jsonl", "md5": "m1", "lock_commit": None},
    },
    gates=["exact_match >= 0.8", "loss < 0.5"],
    must_beat_base=False,
    warnings=["few rows"],
    libraries={"peft": "0.21.2"},
    user_tags={"team": "help-desk"},
    compose={"parents": [{"version": "a/1", "weight": 0.5}], "combination_type": "ties", "density": 0.25},
    parents=[{"version": "a/1", "weight": 0.5}],
    merge={"max_abs_diff": 1.23456789e-6, "diff_vs_base": 0.5},
    merged_uri="/abs/merged",
)


def version(tags: dict[str, str]) -> AdapterVersion:
    return AdapterVersion(
        "support", 1, "candidate", tags, {}, "run", "src", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )


def test_tags_of_a_composed_merged_version_are_exactly_these() -> None:
    """The registry already holds versions written this way: keys and values must not change."""
    compose = '{"combination_type": "ties", "density": 0.25, "parents": [{"version": "a/1", "weight": 0.5}]}'
    assert lineage_tags(FACTS) == {
        "ar.recipe.name": "support",
        "ar.recipe.hash": "ab" * 32,
        "ar.task": "causal_lm_sft",
        "ar.method": "composition",
        "ar.method.family": "reparameterisation",
        "ar.peft_config": '{"peft_type": "LORA", "r": 4}',
        "ar.params.trainable": "123",
        "ar.params.total": "4567",
        "ar.params.trainable_share": "0.0269323",
        "ar.base.id": "smollm2-135m-instruct",
        "ar.base.revision": "",
        "ar.base.fingerprint": "sha256:" + "f" * 64,
        "ar.base.architecture": "LlamaForCausalLM",
        "ar.base.shapes": '{"hidden_size": 32, "vocab_size": 128}',
        "ar.git.commit": "0123456789abcdef0123456789abcdef01234567",
        "ar.git.dirty": "true",
        "ar.data.validation": '{"failures": ["f0", "f1", "f2", "f3", "f4"], "statistics": {"n": 3}, "success": true}',
        "ar.gates": '["exact_match >= 0.8", "loss < 0.5"]',
        "ar.gates.must_beat_base": "false",
        "ar.warnings": '["few rows"]',
        "ar.lib.peft": "0.21.2",
        "ar.user.team": "help-desk",
        "ar.parents": '[{"version": "a/1", "weight": 0.5}]',
        "ar.compose": compose,
        "ar.compose.combination_type": "ties",
        "ar.compose.density": "0.25",
        "ar.data.test.path": "data/test.jsonl",
        "ar.data.test.md5": "m2",
        "ar.data.test.commit": "c" * 40,
        "ar.data.train.path": "data/train.jsonl",
        "ar.data.train.md5": "m1",
        "ar.data.train.commit": "",
        "ar.merge.uri": "/abs/merged",
        "ar.merge.max_abs_diff": "1.23457e-06",
        "ar.merge.diff_vs_base": "0.5",
    }


def test_a_trained_version_records_its_method_and_training_and_a_long_value_is_cut() -> None:
    facts = replace(
        FACTS,
        method="lora",
        method_family="reparameterisation",
        training={"epochs": 1},
        compose=None,
        parents=[],
        merge=None,
        peft_config={"blob": "x" * 6000},
    )
    tags = lineage_tags(facts)
    assert (tags[Tag.METHOD], tags[Tag.TRAINING]) == ("lora", '{"epochs": 1}') and COMPOSED != "lora"
    assert not {Tag.PARENTS, Tag.COMPOSE, Tag.MERGED_URI} & set(tags)
    cut = json.loads(tags[Tag.PEFT_CONFIG])
    assert cut["truncated"] is True and len(tags[Tag.PEFT_CONFIG]) <= MAX_TAG


def test_what_is_written_reads_back() -> None:
    written = version(lineage_tags(FACTS))
    assert datasets_of(written) == (
        DatasetRef("train", "data/train.jsonl", "m1", ""),
        DatasetRef("test", "data/test.jsonl", "m2", "c" * 40),
    )
    assert gates_of(written) == [(g, Gate.parse(g)) for g in FACTS.gates] and not must_beat_base(written)


def test_gates_read_from_a_hand_written_tag() -> None:
    read = gates_of(version({Tag.GATES: '["bleu >= 3", "loss < 1"]'}))
    assert [text for text, _ in read] == ["bleu >= 3", "loss < 1"] and read[1][1] == Gate.parse("loss < 1")
    assert isinstance(read[0][1], ValueError) and "unknown metric 'bleu'" in str(read[0][1])
    assert must_beat_base(version({})) and gates_of(version({})) == []
