"""Lineage tags: written from plain facts and read back by the same module (no store needed)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from dataclasses import replace

from adapter_registry.recipes.schema import Gate as RecipeGate
from adapter_registry.registry.entities import AdapterVersion, DatasetRef, Lineage, Tag
from adapter_registry.registry.lineage import (
    COMPOSED,
    MAX_TAG,
    Gate,
    LineageFacts,
    datasets_of,
    gates_of,
    lineage_tags,
    must_beat_base,
)
from adapter_registry.registry.lineage_render import _edges, _layout, facts_table, to_html

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


def test_a_recorded_gate_reads_as_the_recipe_schema_reads_it() -> None:
    texts = ["accuracy >= 0.8", " loss<1 ", "exact_match == 1", "macro_f1 > -0.5", "loss <= 1e-3", "accuracy >= 8e1",
             "bleu >= 3", "accuracy => 0.8", "accuracy >= ", "Accuracy >= 0.8", "loss < 1.5.2"]  # fmt: skip
    for text in texts:
        try:
            recipe: RecipeGate | str = RecipeGate.parse(text)
        except ValueError as exc:
            recipe = str(exc)
        try:
            recorded: Gate | str = Gate.parse(text)
        except ValueError as exc:
            recorded = str(exc)
        if isinstance(recipe, str) or isinstance(recorded, str):
            assert recorded == recipe, text
            continue
        assert (recorded.metric, recorded.op, recorded.threshold, str(recorded)) == (
            recipe.metric, recipe.op, recipe.threshold, str(recipe)
        ), text  # fmt: skip
        for value in (-1.0, 0.0, 0.001, 0.5, 0.8, 1.0, 80.0):
            assert recorded.passes(value) == recipe.passes(value), (text, value)


def _lineage() -> Lineage:
    from adapter_registry.registry.entities import StageChange

    written = version({**lineage_tags(FACTS), Tag.metric("exact_match"): "0.9", Tag.metric("exact_match_ci_low"): "0.85",
                       Tag.metric("exact_match_ci_high"): "0.94"})  # fmt: skip
    written = replace(written, metrics=AdapterVersion.metrics_from_tags(written.tags))
    when = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
    events = tuple(
        StageChange("support", 1, a, b, "ana", when + dt.timedelta(hours=i), seq=i + 1)
        for i, (a, b) in enumerate([("candidate", "staging"), ("staging", "production")])
    )
    return Lineage(
        version=written, datasets=datasets_of(written), data_validation=FACTS.validation, code_commit="0123abcd",
        code_dirty="false", recipe={"name": "support", "hash": "ab" * 32},
        base={"id": "smollm2-135m-instruct", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
              "fingerprint": "sha256:" + "f" * 64, "architecture": "LlamaForCausalLM"},
        peft_config={"r": 4, "peft_type": "LORA"}, training={"epochs": 1}, parents=FACTS.parents, history=events,
    )  # fmt: skip


def test_the_html_picture_has_no_overlaps_and_every_arrow_its_own_end() -> None:
    lineage = _lineage()
    nodes, edges = _edges(lineage)
    assert nodes["data0"].startswith("train split: ") and nodes["validation"].startswith(
        "data-validation report"
    )
    boxes = _layout(nodes, edges)
    for (a, p), (b, q) in itertools.combinations(boxes.items(), 2):  # no two boxes overlap
        assert p.x + p.w <= q.x or q.x + q.w <= p.x or p.y + p.h <= q.y or q.y + q.h <= p.y, (a, b)
    for box in boxes.values():  # every line of text fits its box
        assert max(len(line) for line in box.lines) * 7.2 <= box.w and len(box.lines) * 16 <= box.h
    page = to_html(lineage)
    ends = re.findall(r'<path d="M[\d.]+,[\d.]+ C[\d.]+,[\d.]+ [\d.]+,[\d.]+ ([\d.]+),([\d.]+)"', page)
    into_run = [end for end in ends if abs(float(end[0]) - boxes["run"].x) < 0.1]
    assert len(into_run) == 7 == len(set(into_run))  # 2 splits, validation, code, recipe, base, parent
    labels = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" fill="#444">', page)
    assert len(labels) == len(set(labels))  # no two edge labels at one place
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_html_page_lists_every_fact_in_a_table() -> None:
    rows = dict(facts_table(_lineage()))
    assert rows["train split"] == "data/train.jsonl · md5 m1" and rows["test split"].endswith(
        "dvc.lock at git " + "c" * 40
    )
    assert (
        rows["data-validation report"] == "passed" and rows["metric exact_match"] == "0.9000 [0.8500, 0.9400]"
    )
    assert rows["base"] == "smollm2-135m-instruct · HuggingFaceTB/SmolLM2-135M-Instruct · LlamaForCausalLM"
    assert rows["event #2"].startswith("2026-11-30 11:00 UTC ana: promote v1 staging → production")
    page = to_html(_lineage())
    assert (
        "<th>train split</th><td>data/train.jsonl · md5 m1</td>" in page
        and "{" not in page.split("<table>")[1]
    )
