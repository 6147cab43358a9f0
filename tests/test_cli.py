"""The ``adapter-registry`` CLI end to end on a real sqlite registry (typer's runner, in process).

The fixtures come from tests/registry/conftest.py (imported below, hence F811 on their parameters).
"""

# ruff: noqa: F811

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_registry.bases.fingerprint import fingerprint_folder
from adapter_registry.cli import app
from adapter_registry.environment import OFFLINE_DEFAULTS
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from registry.conftest import (  # noqa: F401 (fixtures)
    GOOD_METRICS,
    adapter_dir,
    build_adapter,
    build_base,
    empty_db,
    lineage_tags,
    store,
    tiny_adapter_src,
    tiny_base,
)

NAME = "support_sft_lora"
runner = CliRunner()


def cli(store: AdapterStore, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--tracking-uri", store.tracking_uri, *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def registered(store: AdapterStore, adapter_dir: Path, tiny_base: Path) -> AdapterStore:
    """Two versions of NAME on the tiny base, and one of 'other' on another base."""
    tags = lineage_tags(base=str(tiny_base), fingerprint=fingerprint_folder(tiny_base))
    store.register_adapter(NAME, adapter_dir, tags, GOOD_METRICS)
    store.register_adapter(NAME, adapter_dir, tags, GOOD_METRICS)
    store.register_adapter("other", adapter_dir, lineage_tags(base="bert-ish", fingerprint="sha256:" + "1" * 64,
                                                             **{Tag.data_md5("train"): "feed" * 8}),
                           GOOD_METRICS)  # fmt: skip
    return store


def test_commands_start_from_the_offline_defaults(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in OFFLINE_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    code, _, err = cli(store, "list", "--json")
    assert code == 0, err
    assert {k: os.environ[k] for k in OFFLINE_DEFAULTS} == OFFLINE_DEFAULTS


def test_help_is_fast_and_lists_commands() -> None:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "adapter_registry", "--help"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert time.perf_counter() - start < 1.0
    for command in ("list", "show", "promote", "rollback", "audit", "lineage", "compat", "pull"):
        assert command in out


def test_list_and_show(registered: AdapterStore) -> None:
    code, out, _ = cli(registered, "list", "--json")
    assert code == 0
    assert [(v["name"], v["version"], v["stage"]) for v in json.loads(out)] == [
        ("other", 1, "candidate"), (NAME, 2, "candidate"), (NAME, 1, "candidate"),
    ]  # fmt: skip
    code, out, _ = cli(registered, "list", "--base-model", "bert-ish")
    assert code == 0 and "other/1" in out and f"{NAME}/1" not in out
    code, out, _ = cli(registered, "show", f"{NAME}@candidate", "--json")
    assert code == 0 and json.loads(out)["version"] == 2
    code, out, _ = cli(registered, "show", f"{NAME}/1", "--all")  # every raw tag
    assert code == 0 and "ar.sha256.adapter_config.json" in out


def test_show_reads_in_sections(registered: AdapterStore) -> None:
    code, out, _ = cli(registered, "show", f"{NAME}/1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{NAME}/1" and lines[1].startswith("  stage      candidate")
    sections = [line for line in lines if not line.startswith(" ")]
    assert sections == [
        f"{NAME}/1", "metrics (test split, 95% interval; baseline)", "gates (checked again at each promotion)",
        "lineage (`adapter-registry lineage` for the whole tree)",
        f"files: 3 with a recorded sha256; every raw tag: show {NAME}/1 --all",
    ]  # fmt: skip
    assert "  exact_match  0.9100 [0.8600, 0.9500]   baseline 0.0000" in lines
    assert "  ✓ exact_match >= 0.8  (exact_match = 0.91)" in lines and "  ✓ beats its baseline" in lines
    assert (
        "  data       train split: data/01_raw/support/train.jsonl md5 d41d8cd98f00b204e9800998ecf8427e"
        in lines
    )
    assert "ar.sha256" not in out and "{" not in out  # no raw tags, no JSON


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "ghost/1"], "error: adapter 'ghost' is not registered"),
        (["show", f"{NAME}/9"], f"error: adapter '{NAME}' has no version 9"),
        (["show", f"{NAME}@live"], "error: 'support_sft_lora@live': stage 'live' does not exist"),
        (["list", "--stage", "live"], "error: stage 'live' does not exist"),
        (["promote", f"{NAME}/1", "--to", "prod"], "error: cannot promote to 'prod'"),
        (["promote", f"{NAME}/1", "--to", "staging", "--force"], "error: --force needs --reason"),
        (["rollback", NAME], f"error: rollback of {NAME}@production: no version holds production"),
        (["audit", "ghost"], "error: adapter 'ghost' is not registered"),
        (["lineage"], "error: give exactly one of NAME/VERSION, --dataset, --md5 or --base-model"),
        (["lineage", f"{NAME}/1", "--format", "png"], "error: --format 'png' is not one of"),
        (
            ["lineage", "--dataset", "d41d8cd98f00b204e9800998ecf8427e"],
            "error: --dataset takes a path (PATH or PATH@MD5); 'd41d8cd98f00b204e9800998ecf8427e' is an md5: "
            "did you mean --md5 d41d8cd98f00b204e9800998ecf8427e?",
        ),
        (
            ["compat", f"{NAME}/1", "--base", "/nonexistent/base"],
            "error: base '/nonexistent/base' is not a model",
        ),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    registered: AdapterStore, args: list[str], message: str
) -> None:
    before = [(v.ref, v.stage, v.aliases) for v in registered.list_versions()]
    code, _, err = cli(registered, *args)
    assert code == 1
    assert err.startswith(message) and err.count("\n") == 1, err
    assert [(v.ref, v.stage, v.aliases) for v in registered.list_versions()] == before


def test_promote_rollback_and_audit_through_the_cli(registered: AdapterStore, tmp_path: Path) -> None:
    policy = tmp_path / "open.yml"
    policy.write_text("enforce: never\n")
    steps = [
        ["promote", f"{NAME}/1", "--to", "staging", "--reason", "first"],
        ["promote", f"{NAME}@staging", "--to", "production"],
        ["promote", f"{NAME}/2", "--to", "staging"],
        ["promote", f"{NAME}/2", "--to", "production", "--reason", "better"],
        ["rollback", NAME, "--stage", "production", "--reason", "incident"],
    ]
    for seen, step in enumerate(steps):
        code, out, err = cli(registered, *step, "--policy", str(policy), "--json")
        assert code == 0, err
        # every command appends exactly one event and leaves the earlier ones as they were
        code, out, _ = cli(registered, "audit", NAME, "--json")
        trail = json.loads(out)
        assert code == 0 and trail["intact"] and len(trail["events"]) == seen + 1
    events = trail["events"]
    assert [(e["action"], e["version"], e["to_stage"]) for e in events] == [
        ("promote", 1, "staging"), ("promote", 1, "production"), ("promote", 2, "staging"),
        ("promote", 2, "production"), ("rollback", 1, "production"),
    ]  # fmt: skip
    assert events[3]["replaced_version"] == 1 and events[4]["reason"] == "incident"
    assert registered.holder(NAME, "production").version == 1
    code, out, _ = cli(registered, "audit", NAME)
    assert code == 0 and "incident" in out
    assert "this trail is unsigned" in out and not trail["signed"]  # a local store: says what it cannot prove


def test_the_cli_has_no_command_that_edits_history() -> None:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {
        "list",
        "show",
        "promote",
        "rollback",
        "retire",
        "audit",
        "history",
        "lineage",
        "compat",
        "pull",
        "serve",
        "reproduce",
        "export",  # writes a folder for a serving engine; reads the registry only
        "vllm-sync",  # loads adapters on vLLM servers; reads the registry only
        "recipes",  # prints the recipes of pipelines/ (a CI matrix); reads no registry
        "fleet",  # lists the replicas' heartbeats; reads the registry only
    }
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    assert set(groups) == {"stack", "canary"}  # stack: up, down, status: no registry edits
    canary = groups["canary"]
    assert canary is not None
    # status reads; watch and stop append audited events (and promote through the gates), never edit one
    assert {c.name for c in canary.registered_commands} == {"status", "watch", "stop"}


def test_lineage_forward_reverse_and_pictures(registered: AdapterStore, tmp_path: Path) -> None:
    code, out, _ = cli(registered, "lineage", f"{NAME}/1", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["datasets"][0] == {
        "split": "train", "path": "data/01_raw/support/train.jsonl", "md5": "d41d8cd98f00b204e9800998ecf8427e",
        "commit": "89abcdef0123456789abcdef0123456789abcdef",
    }  # fmt: skip
    assert data["code"]["dirty"] == "false" and data["peft_config"]["r"] == 4
    assert data["data_validation"]["success"] is True and data["metrics"]["exact_match"] == 0.91
    code, out, _ = cli(registered, "lineage", f"{NAME}/1")
    assert code == 0 and "d41d8cd98f00b204e9800998ecf8427e" in out
    assert "train split: data/01_raw/support/train.jsonl" in out and "test split: " in out
    assert (
        "data-validation report (Great Expectations + dvc.lock): passed" in out
    )  # not a second "validation"
    assert "adapter: lora r=4 lora_alpha=8 target_modules=q_proj,v_proj" in out
    assert "training: epochs=1 learning_rate=0.0002" in out and "{" not in out  # no JSON in the tree

    code, out, _ = cli(registered, "lineage", f"{NAME}/1", "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR") and "base -->|base| run" in out
    code, out, _ = cli(registered, "lineage", f"{NAME}/1", "--format", "dot")
    assert code == 0 and out.startswith("digraph lineage") and out.rstrip().endswith("}")
    picture = tmp_path / "lineage.html"
    code, _, _ = cli(registered, "lineage", f"{NAME}/1", "--format", "html", "--output", str(picture))
    assert code == 0 and "<svg" in picture.read_text()

    code, out, _ = cli(
        registered,
        "lineage",
        "--dataset",
        "data/01_raw/support/train.jsonl@d41d8cd98f00b204e9800998ecf8427e",
        "--json",
    )
    assert code == 0 and [(v["name"], v["version"], v["stage"]) for v in json.loads(out)] == [
        (NAME, 2, "candidate"), (NAME, 1, "candidate"),
    ]  # fmt: skip
    code, out, _ = cli(registered, "lineage", "--dataset", "data/01_raw/support/test.jsonl", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    code, out, _ = cli(registered, "lineage", "--md5", "feed" * 8, "--json")
    assert code == 0 and [v["name"] for v in json.loads(out)] == ["other"]
    code, out, _ = cli(registered, "lineage", "--base-model", "sha256:" + "1" * 64, "--json")
    assert code == 0 and [v["name"] for v in json.loads(out)] == ["other"]


def test_pull_verifies_checksums(registered: AdapterStore, tmp_path: Path) -> None:
    dest = tmp_path / "pulled"
    code, out, err = cli(registered, "pull", f"{NAME}@candidate", str(dest), "--json")
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == sorted(json.loads(out)["files"])
    code, _, err = cli(registered, "pull", f"{NAME}/2", str(dest))
    assert code == 1 and "exists and is not an empty folder" in err

    # corrupt the stored artifact of version 1, then delete a file of version 2
    source = Path(registered.get_version(NAME, 1).source.removeprefix("file://"))
    weights = source / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x07")
    code, _, err = cli(registered, "pull", f"{NAME}/1", str(tmp_path / "bad"))
    assert code == 1 and err.startswith(
        f"error: pull of {NAME}/1 refused: file 'adapter_model.safetensors' has sha256"
    )
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.pull-*"))
    (Path(registered.get_version(NAME, 2).source.removeprefix("file://")) / "README.md").unlink()
    (tmp_path / "empty").mkdir()
    code, _, err = cli(registered, "pull", f"{NAME}/2", str(tmp_path / "empty"))
    assert code == 1 and "file 'README.md' is missing" in err
    assert list((tmp_path / "empty").iterdir()) == []


def test_compat_three_outcomes(registered: AdapterStore, tiny_base: Path, tmp_path: Path) -> None:
    code, out, err = cli(registered, "compat", f"{NAME}/1", "--base", str(tiny_base), "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["outcome"] == "compatible"
    functional = next(c for c in report["checks"] if c["name"] == "functional")
    assert functional["passed"] and "max |output(adapter) - output(base)|" in functional["detail"]

    retrained = build_base(tmp_path / "same-shapes", seed=5)
    code, out, err = cli(registered, "compat", f"{NAME}/1", "--base", str(retrained))
    assert code == 3 and err.startswith("error: retrain_recommended: base fingerprint: base is sha256:")

    wider = build_base(tmp_path / "wider", hidden_size=48, num_attention_heads=4)
    code, out, err = cli(registered, "compat", f"{NAME}/1", "--base", str(wider), "--json")
    assert code == 4 and json.loads(out)["outcome"] == "incompatible"
    assert "hidden_size: base has 48, adapter expects 32" in err
    assert "module model.layers.0.self_attn.q_proj: base 48→48, adapter expects 32→32" in err
    assert err.count("\n") == 1 and len(err) < 400  # a summary, not a line per module
    code, out, _ = cli(registered, "compat", f"{NAME}/1", "--base", str(wider))
    assert code == 4 and out.splitlines()[0] == f"{NAME}/1 on {wider}: incompatible (exit 4)"
    assert "  ✗ target modules: 4 of 4 shaped otherwise, e.g. module model.layers.0.self_attn.q_proj" in out
    assert "every check (" in out and "--verbose" in out
    code, out, _ = cli(registered, "compat", f"{NAME}/1", "--base", str(wider), "--verbose")
    assert code == 4 and out.count("module model.layers.") == 4  # a row per module

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hi")
    code, _, err = cli(registered, "compat", f"{NAME}/1", "--base", str(not_a_model))
    assert (
        code == 1 and err.startswith(f"error: base '{not_a_model}' is not a model") and err.count("\n") == 1
    )


def test_compat_on_another_architecture_says_how_many_modules_are_missing(
    registered: AdapterStore, tiny_bert: Path
) -> None:
    code, out, err = cli(registered, "compat", f"{NAME}/1", "--base", str(tiny_bert))
    assert code == 4, err
    assert "  ✗ target modules: 4 of 4 missing from the base, e.g. model.layers.0.self_attn.q_proj, " in out
    assert err.startswith("error: incompatible: architecture: base is ") and err.count("\n") == 1
    assert "4 of 4 missing from the base" in err and len(err) < 800  # a line per kind of mismatch


def test_compat_flags_an_adapter_that_changes_nothing(
    store: AdapterStore, tiny_base: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    silent = Path(shutil.copytree(build_adapter(tiny_base, tmp_path / "src"), tmp_path / "silent"))
    weights = load_file(silent / "adapter_model.safetensors")
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
              silent / "adapter_model.safetensors")  # fmt: skip
    tags = lineage_tags(base=str(tiny_base), fingerprint=fingerprint_folder(tiny_base))
    store.register_adapter("silent", silent, tags, GOOD_METRICS)
    code, _, err = cli(store, "compat", "silent/1", "--base", str(tiny_base))
    assert (
        code == 4
        and "functional: max |output(adapter) - output(base)| = 0: the adapter does not change" in err
    )


def test_recipes_json_is_a_ci_matrix() -> None:
    root = Path(__file__).resolve().parents[1]
    result = runner.invoke(app, ["recipes", "--root", str(root), "--json"])
    assert result.exit_code == 0, result.stderr
    recipes = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(recipes) == {p.stem for p in (root / "pipelines").glob("*.yaml")}
    router = recipes["intent_router"]
    assert (router["base"], router["task"], router["method"], router["needs"]) == (
        "all-minilm-l6-v2", "sequence_classification", "lora", [],
    )  # fmt: skip
    assert router["data"]["train"] == "data/05_model_input/intent_routing/train.jsonl"
    assert router["command"] == "kedro run --namespaces intent_router"


def test_a_long_listing_is_drawn_as_rich_draws_it() -> None:
    """Above 200 rows the listing table is drawn without rich's layout (7 s for 10,000 rows): the same text."""
    import io

    from rich.console import Console
    from rich.table import Table

    from adapter_registry.cli import _plain_table

    columns = ("version", "stage", "base model", "method", "key metric", "created")
    rows = [(f"tenant_{i:03d}/{i % 20 + 1}", "archived" if i % 3 else "[red]production (UNATTESTED)[/red]",
             "smollm2-135m-instruct", "lora", f"exact_match={i / 7:.4g}", "2026-11-30 12:00") for i in range(30)]  # fmt: skip
    for title in ("30 versions", "30 versions built from data/05_model_input/intent_routing/train.jsonl"):
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        drawn = io.StringIO()
        Console(width=160, file=drawn).print(table)
        assert _plain_table(title, columns, rows) == drawn.getvalue().rstrip("\n")
    assert _plain_table("wide", columns, [("x" * 150, *rows[0][1:])]) is None  # rich wraps what does not fit
