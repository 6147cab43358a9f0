"""The register_adapter contract and the store's read operations, on a real sqlite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter_registry.checksums import sha256_file
from adapter_registry.registry.entities import ADAPTER_ARTIFACT, RegistryError, Tag
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags


def register(store: AdapterStore, adapter_dir: Path, name: str = "support_sft_lora", **kw):
    return store.register_adapter(
        model_name=name, adapter_dir=adapter_dir, tags=kw.pop("tags", lineage_tags()),
        metrics=kw.pop("metrics", GOOD_METRICS), **kw,
    )  # fmt: skip


def test_register_adapter_records_everything(store: AdapterStore, adapter_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "support.yaml"
    recipe.write_text("name: support_sft_lora\n")
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "report.json").write_text("{}")
    version = register(
        store, adapter_dir, artifacts={"recipe.yaml": recipe, "evaluation": evaluation}, description="first"
    )

    assert (version.name, version.version, version.stage) == ("support_sft_lora", 1, "candidate")
    assert version.aliases == ("candidate",)
    assert version.description == "first"
    assert version.tags[Tag.RUN_ID] == version.run_id
    assert version.source.endswith(f"/{ADAPTER_ARTIFACT}")
    for file in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert version.tags[Tag.sha256(file)] == sha256_file(adapter_dir / file)
    assert version.tags["ar.metric.base.exact_match"] == "0.0"
    assert version.metrics == pytest.approx(GOOD_METRICS)

    run = store.run_info(version.run_id)
    assert run["status"] == "FINISHED"
    assert run["metrics"]["base.loss"] == pytest.approx(3.1)
    artifacts = Path(run["artifact_uri"].removeprefix("file://"))
    assert (artifacts / "recipe.yaml").read_text() == "name: support_sft_lora\n"
    assert (artifacts / "evaluation" / "report.json").is_file()
    assert (artifacts / ADAPTER_ARTIFACT / "adapter_config.json").is_file()

    second = register(store, adapter_dir)
    assert second.version == 2
    assert store.holder("support_sft_lora", "candidate").version == 2


def test_register_into_given_and_active_run(store: AdapterStore, adapter_dir: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        with mlflow.start_run() as run:
            active = register(store, adapter_dir)
        assert active.run_id == run.info.run_id
        given = register(store, adapter_dir, run_id=run.info.run_id)
        assert given.run_id == run.info.run_id
    finally:
        mlflow.set_tracking_uri("")


def _assert_nothing_registered(store: AdapterStore) -> None:
    assert store.list_models() == []
    assert store.list_versions() == []


def test_adapter_dir_without_config_is_refused(store: AdapterStore, adapter_dir: Path) -> None:
    (adapter_dir / "adapter_config.json").unlink()
    with pytest.raises(RegistryError, match=r"adapter_dir '.*adapter' lacks adapter_config.json") as info:
        register(store, adapter_dir)
    assert info.value.code == "INVALID_ADAPTER"
    _assert_nothing_registered(store)


def test_missing_folder_and_bad_inputs_are_refused(
    store: AdapterStore, adapter_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(RegistryError, match=r"adapter_dir '.*nowhere' is not a folder"):
        register(store, tmp_path / "nowhere")
    with pytest.raises(RegistryError, match=r"tag values must be strings; got \{'ar.git.dirty': False\}"):
        register(store, adapter_dir, tags={Tag.GIT_DIRTY: False})
    with pytest.raises(RegistryError, match=r"metric 'loss' must be a number; got 'low'"):
        register(store, adapter_dir, metrics={"loss": "low"})
    with pytest.raises(RegistryError, match=r"model_name 'bad name!'"):
        register(store, adapter_dir, name="bad name!")
    with pytest.raises(RegistryError, match=r"artifact 'x.yaml': '.*missing.yaml' does not exist"):
        register(store, adapter_dir, artifacts={"x.yaml": tmp_path / "missing.yaml"})
    with pytest.raises(RegistryError, match=r"tags \['ar.stage'\] are written by the store"):
        register(store, adapter_dir, tags={Tag.STAGE: "production"})
    _assert_nothing_registered(store)


class FailsAfterCreatingVersion(AdapterStore):
    """Injects a failure after the version exists: the last step of registration raises."""

    def _finalise_version(self, model_name: str, version: str) -> None:
        raise RuntimeError("injected: alias service down")


class CorruptsUpload(AdapterStore):
    """Uploads a damaged copy of the weights, as a broken network or store would."""

    def _upload(self, run_id, adapter_dir, artifacts):  # type: ignore[no-untyped-def]
        damaged = adapter_dir.parent / "damaged"
        import shutil

        shutil.copytree(adapter_dir, damaged)
        with (damaged / "adapter_model.safetensors").open("r+b") as handle:
            handle.seek(-1, 2)
            handle.write(b"\x00" if handle.read(1) != b"\x00" else b"\x01")
        super()._upload(run_id, damaged, artifacts)


def test_failure_after_version_creation_rolls_everything_back(store: AdapterStore, adapter_dir: Path) -> None:
    failing = FailsAfterCreatingVersion(store.tracking_uri)
    with pytest.raises(
        RegistryError, match=r"registering 'support_sft_lora' .* failed: injected: alias service"
    ):
        register(failing, adapter_dir)
    _assert_nothing_registered(store)

    # an existing model survives a failed registration of its next version
    register(store, adapter_dir)
    with pytest.raises(RegistryError, match="injected"):
        register(failing, adapter_dir)
    assert [v.version for v in store.list_versions()] == [1]


def test_corrupted_upload_is_caught_before_any_version(store: AdapterStore, adapter_dir: Path) -> None:
    with pytest.raises(
        RegistryError, match=r"upload check .* file 'adapter_model.safetensors' has sha256"
    ) as info:
        register(CorruptsUpload(store.tracking_uri), adapter_dir)
    assert info.value.code == "CORRUPTED_UPLOAD"
    _assert_nothing_registered(store)


def test_unknown_adapter_version_and_stage(store: AdapterStore, adapter_dir: Path) -> None:
    register(store, adapter_dir)
    with pytest.raises(RegistryError, match=r"adapter 'nope' is not registered"):
        store.resolve("nope/1")
    with pytest.raises(RegistryError, match=r"adapter 'support_sft_lora' has no version 7"):
        store.resolve("support_sft_lora/7")
    with pytest.raises(RegistryError, match=r"stage 'prod' does not exist"):
        store.resolve("support_sft_lora@prod")
    with pytest.raises(RegistryError, match=r"'support_sft_lora' is not NAME/VERSION"):
        store.resolve("support_sft_lora")
    with pytest.raises(RegistryError, match=r"no version of 'support_sft_lora' holds stage 'production'"):
        store.resolve("support_sft_lora@production")
    assert store.resolve("support_sft_lora@candidate").version == 1


def test_list_filters(store: AdapterStore, adapter_dir: Path) -> None:
    register(store, adapter_dir, name="a")
    register(store, adapter_dir, name="b", tags=lineage_tags(base="other-base", fingerprint="e" * 64))
    register(store, adapter_dir, name="b", tags={**lineage_tags(), Tag.METHOD: "qlora"})
    assert [v.ref for v in store.list_versions()] == ["a/1", "b/2", "b/1"]
    assert [v.ref for v in store.list_versions(base_model="other-base")] == ["b/1"]
    assert [v.ref for v in store.list_versions(base_model="f" * 64)] == ["a/1", "b/2"]
    assert [v.ref for v in store.list_versions(method="qlora")] == ["b/2"]
    assert [v.ref for v in store.list_versions(stage="candidate", name="a")] == ["a/1"]
    assert store.list_versions(stage="production") == []
    with pytest.raises(RegistryError, match="stage 'live' does not exist"):
        store.list_versions(stage="live")
    assert json.loads(json.dumps(store.get_version("a", 1).to_dict()))["version"] == 1


def test_sqlite_fast_path_equals_mlflow_search(store: AdapterStore, adapter_dir: Path) -> None:
    register(store, adapter_dir, name="a")
    register(store, adapter_dir, name="b", tags=lineage_tags(base="other-base"))
    register(store, adapter_dir, name="b")
    via_mlflow = sorted(
        (mv.name, int(mv.version), dict(mv.tags)) for mv in store._client.search_model_versions()
    )
    fast = sorted((v.name, v.version, v.tags) for v in store.list_versions())
    assert fast == via_mlflow
    filtered = store._client.search_model_versions(f"tags.`{Tag.BASE_ID}` = 'other-base'")
    assert [(v.name, v.version) for v in store.list_versions(base_model="other-base")] == [
        (mv.name, int(mv.version)) for mv in filtered
    ]


def test_symbolic_links_in_the_adapter_folder_are_refused(
    store: AdapterStore, adapter_dir: Path, tmp_path: Path
) -> None:
    """``register`` would upload a link's target (a private key, a whole folder) as if it were the adapter's."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY\n")
    (adapter_dir / "notes.txt").symlink_to(outside / "id_rsa")
    with pytest.raises(
        RegistryError, match=r"adapter_dir '.*adapter' holds symbolic links: notes.txt\. Fix"
    ) as info:
        register(store, adapter_dir)
    assert info.value.code == "INVALID_ADAPTER"
    (adapter_dir / "notes.txt").unlink()
    (adapter_dir / "extra").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match=r"holds symbolic links: extra\. Fix"):
        register(store, adapter_dir)
    (adapter_dir / "extra").unlink()
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "key").symlink_to(outside / "id_rsa")
    with pytest.raises(
        RegistryError, match=r"artifact 'reports': '.*reports' holds symbolic links: key\. Fix"
    ):
        register(store, adapter_dir, artifacts={"reports": reports})
    _assert_nothing_registered(store)


def test_pull_never_writes_through_a_symbolic_link(
    store: AdapterStore, adapter_dir: Path, tmp_path: Path
) -> None:
    register(store, adapter_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "pulled"
    dest.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RegistryError, match=r"destination '.*pulled' is a symbolic link\. Fix") as info:
        store.pull("support_sft_lora/1", dest)
    assert info.value.code == "INVALID_INPUT"
    assert list(elsewhere.iterdir()) == []
