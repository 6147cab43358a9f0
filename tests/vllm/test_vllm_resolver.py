"""The resolver plugin's registry side, as the library function vLLM's plugin calls: names -> attested versions ->
sha256-checked, digest-keyed folders in vLLM's format. A real sqlite registry, real peft adapters, no vLLM."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from vllm_helpers import attest, register

from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.vllm.resolver import RegistryResolver, ResolveError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def resolver(registry: AdapterStore, tmp_path: Path) -> RegistryResolver:
    return RegistryResolver(registry, tmp_path / "cache", tenants={"acme": "acme_support_lora"})


def downloads(store: AdapterStore) -> list[str]:
    """Count the store's downloads (a spy on our own facade's method; the download itself still runs)."""
    calls: list[str] = []
    original = store.download_adapter

    def counted(version, dst):  # type: ignore[no-untyped-def]
        calls.append(version.ref)
        return original(version, dst)

    store.download_adapter = counted  # type: ignore[method-assign]
    return calls


def test_a_stage_resolves_to_its_attested_version_pulled_once_into_a_digest_folder(
    resolver: RegistryResolver, registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path]
) -> None:
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    calls = downloads(registry)
    first = resolver.resolve("acme_support_lora@production")
    assert first is not None and not first.cache_hit and calls == ["acme_support_lora/1"]
    digest = registry.get_version("acme_support_lora", 1).checksums["adapter_model.safetensors"]
    assert first.lora_name == f"acme_support_lora@sha256:{digest}" and first.digest == f"sha256:{digest}"
    assert (
        first.path == resolver.cache_dir / "acme_support_lora" / digest
        and first.version == "acme_support_lora/1"
    )
    assert json.loads((first.path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (
        "--lora-modules 'acme_support_lora@sha256:" + digest + "=" + str(first.path)
        in (first.path / "README.md").read_text()
    )

    again = resolver.resolve("acme_support_lora@production")
    assert again is not None and again.cache_hit and again.path == first.path
    assert calls == ["acme_support_lora/1"]  # the second call downloaded nothing
    for name in (
        "acme",
        "acme_support_lora",
        "acme_support_lora/1",
        first.lora_name,
    ):  # tenant, bare, version, digest
        other = resolver.resolve(name)
        assert other is not None and other.path == first.path and other.requested == name
    assert calls == ["acme_support_lora/1"]


def test_an_audited_alias_move_resolves_to_a_new_digest_folder(
    resolver: RegistryResolver, registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path]
) -> None:
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    old = resolver.resolve("acme_support_lora@production")
    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    attest(registry, "acme_support_lora", 2)
    new = resolver.resolve("acme_support_lora@production")
    assert old is not None and new is not None
    assert new.version == "acme_support_lora/2" and not new.cache_hit
    assert new.digest != old.digest and new.path != old.path and new.lora_name != old.lora_name
    assert (old.path / "adapter_model.safetensors").is_file()  # an immutable folder: never rewritten in place


def test_an_unattested_alias_holder_is_held_back(
    resolver: RegistryResolver, registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path]
) -> None:
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    registry.set_stage("acme_support_lora", 2, "production")  # the alias moved outside adapter-registry
    resolved = resolver.resolve("acme_support_lora@production")
    assert resolved is not None and resolved.version == "acme_support_lora/1"
    assert (
        "held by version 2, which no audited" in resolved.note
        and "serving the last attested version 1" in resolved.note
    )

    register(registry, "globex", lora_dirs["two"], vllm_base)
    registry.set_stage("globex", 1, "production")
    with pytest.raises(
        ResolveError, match=r"nothing attested to serve: promote a version with `adapter-registry promote`"
    ):
        resolver.resolve("globex@production")


def test_tampered_files_are_refused_and_a_tampered_cache_is_pulled_again(
    resolver: RegistryResolver,
    registry: AdapterStore,
    vllm_base: Path,
    lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    resolved = resolver.resolve("acme_support_lora@production")
    assert resolved is not None
    (resolved.path / "adapter_model.safetensors").write_bytes(b"not the weights")
    again = resolver.resolve("acme_support_lora@production")
    assert again is not None and not again.cache_hit  # the cache did not check out: pulled and exported again
    assert (again.path / "adapter_model.safetensors").read_bytes() == (
        lora_dirs["one"] / "adapter_model.safetensors"
    ).read_bytes()

    run_id = registry.get_version("acme_support_lora", 1).run_id
    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    v2 = registry.get_version("acme_support_lora", 2)
    attest(registry, "acme_support_lora", 2)  # (promotion checks the files: they are tampered with after it)
    weights = next(tmp_path.rglob(f"{v2.run_id}/artifacts/adapter/adapter_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(
        ResolveError,
        match=r"acme_support_lora/2: pull of acme_support_lora/2 refused: file 'adapter_model.safetensors' has sha256",
    ):
        resolver.resolve("acme_support_lora@production")
    assert not (resolver.cache_dir / "acme_support_lora" / v2.checksums["adapter_model.safetensors"]).exists()
    assert run_id  # version 1's files were never touched


def test_names_that_are_not_ours_and_ones_that_cannot_be_served(
    resolver: RegistryResolver, registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path]
) -> None:
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    register(registry, "dora", lora_dirs["dora"], vllm_base)
    attest(registry, "dora", 1)
    assert resolver.resolve("meta-llama/Llama-3-8B") is None  # someone else's: vLLM asks its next resolver
    assert resolver.resolve("nobody@production") is None
    with pytest.raises(ResolveError, match=r"no version holds production; promote one"):
        resolver.resolve("acme_support_lora@production")
    with pytest.raises(ResolveError, match=r"stage 'prod' is not one of candidate, staging, production"):
        resolver.resolve("acme_support_lora@prod")
    with pytest.raises(ResolveError, match=r"no registered version of 'acme_support_lora' has these weights"):
        resolver.resolve("acme_support_lora@sha256:" + "0" * 64)
    with pytest.raises(ResolveError, match=r"dora/1 cannot be served by vLLM: DoRA: use_dora=true"):
        resolver.resolve("dora@production")
    assert resolver.resolve("acme_support_lora@candidate") is not None  # candidate is not gated


def test_the_served_base_must_be_the_trained_one(
    resolver: RegistryResolver,
    registry: AdapterStore,
    vllm_base: Path,
    lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    from serving.conftest import build_base

    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    assert resolver.resolve("acme_support_lora@production", base_model_name=str(vllm_base)) is not None
    other = build_base(tmp_path / "other-base", seed=7)
    with pytest.raises(
        ResolveError, match=r"trained on base .*tiny-llama \(sha256:.*\); vLLM serves .*other-base"
    ):
        resolver.resolve("acme_support_lora@production", base_model_name=str(other))
    with pytest.raises(ResolveError, match=r"vLLM serves HuggingFaceTB/SmolLM2-135M-Instruct"):
        resolver.resolve(
            "acme_support_lora@production", base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    register(registry, "smol", lora_dirs["one"], vllm_base, **{Tag.BASE_ID: "smollm2-135m-instruct"})
    attest(registry, "smol", 1)  # an offline base is served by its hub id
    assert (
        resolver.resolve("smol@production", base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct") is not None
    )


def test_the_plugin_is_declared_and_imports_no_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "vllm.general_plugins"
    ]
    assert entry == {"adapter_registry_lora_resolver": "adapter_registry.vllm.resolver:register"}
    code = (
        "import sys, adapter_registry.vllm.resolver as r, adapter_registry.vllm.sync;"
        "print(callable(r.register), 'vllm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["True", "False"]

    from adapter_registry.vllm.resolver import from_environment

    (tmp_path / "tenants.yml").write_text("tenants:\n  acme: acme_support_lora\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("ADAPTER_REGISTRY_VLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ADAPTER_REGISTRY_VLLM_STAGE", "staging")
    monkeypatch.setenv("ADAPTER_REGISTRY_TENANTS", str(tmp_path / "tenants.yml"))
    monkeypatch.setenv("ADAPTER_REGISTRY_VLLM_MAX_LORA_RANK", "32")
    configured = from_environment()
    assert (configured.cache_dir, configured.stage, configured.tenants, configured.max_lora_rank) == (
        tmp_path / "cache", "staging", {"acme": "acme_support_lora"}, 32,
    )  # fmt: skip
    if (
        getattr(importlib.util.find_spec("vllm"), "origin", None) is None
    ):  # (tests/vllm, a namespace, is not vLLM)
        from adapter_registry.vllm.resolver import register as plugin

        with pytest.raises(ModuleNotFoundError, match="vllm"):
            plugin()  # only vLLM calls it, where vLLM is installed
