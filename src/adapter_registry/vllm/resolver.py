"""The LoRA resolver plugin: vLLM asks for ``acme_support_lora@production`` and gets the attested version's files.

vLLM calls a LoRA resolver when a request names a model it has not loaded
(https://docs.vllm.ai/en/latest/design/lora_resolver_plugins/; ``OpenAIServingModels.resolve_lora`` in
``vllm/entrypoints/openai/serving_models.py``). Resolvers are registered by general plugins, found through the
``vllm.general_plugins`` entry point (https://docs.vllm.ai/en/latest/design/plugin_system/); this project declares
``adapter_registry_lora_resolver = adapter_registry.vllm.resolver:register`` in pyproject.toml.

The registry side is a plain library function, :meth:`RegistryResolver.resolve` (tested on CPU):

1. the requested name is read as ``NAME@STAGE``, ``NAME/VERSION``, ``NAME@sha256:<hex>``, a tenant of
   ``conf/base/tenants.yml`` or a bare adapter name (both served at the resolver's stage); other names are not ours
   (None: vLLM asks its next resolver);
2. a stage resolves to its *attested* holder only (``registry.stages``, as ``serve`` does): an alias moved outside
   adapter-registry is held back and the last version an audited promotion placed there is served instead; with
   none, the request is refused;
3. the version's files are pulled with their registered sha256 checked, into a cache folder keyed by the digest
   of its weights (``<cache>/<name>/<hex>``), and exported in vLLM's format (``vllm.export``; an adapter vLLM
   cannot take is refused with the reason). A cached folder is checked against its manifest before it is reused;
4. vLLM registers it under ``NAME@sha256:<hex>``: the response's ``model`` field and this module's log name the
   version and digest, and a moved alias resolves to another folder and another name, never to a stale one.

vLLM keeps what a resolver returned under the *requested* name and does not ask again for that name until it is
unloaded (``/v1/unload_lora_adapter`` with that name). A request for ``NAME@production`` therefore keeps the
version it first resolved to until then: ``adapter-registry vllm-sync`` unloads such names when the alias moves
(or restart vLLM). The files can never be stale: each version has its own digest folder and its own LoRA id.

The plugin (:func:`register`) reads its settings from the environment of ``vllm serve``: ``MLFLOW_TRACKING_URI``
(default ``sqlite:///<cwd>/mlflow.db``), ``ADAPTER_REGISTRY_VLLM_CACHE`` (default
``~/.cache/adapter_registry/vllm``), ``ADAPTER_REGISTRY_VLLM_STAGE`` (default production, for tenants and bare
names), ``ADAPTER_REGISTRY_TENANTS`` (default ``conf/base/tenants.yml`` when present) and
``ADAPTER_REGISTRY_VLLM_MAX_LORA_RANK`` (optional: refuse over-rank adapters before vLLM tries them). vLLM itself
needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (and, if ``VLLM_PLUGINS`` is set, this plugin's name in it).

Importing this module imports no vLLM: only :func:`register` (called by vLLM) does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_registry.checksums import checksum_problem, sha256_folder
from adapter_registry.registry.entities import PROMOTION_STAGES, STAGES, AdapterVersion, RegistryError, Tag
from adapter_registry.vllm.export import (
    EXPORT_MANIFEST,
    OFFLINE_HUB_IDS,
    ExportRefused,
    export_folder,
    lora_name,
)

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

__all__ = ["RegistryResolver", "ResolveError", "ResolvedAdapter", "register", "resolve"]

log = logging.getLogger("adapter_registry.vllm")
PLUGIN_NAME = "adapter_registry_lora_resolver"  # the entry point's name (what VLLM_PLUGINS lists)
DIGEST_REF = re.compile(r"^(?P<name>.+)@sha256:(?P<hex>[0-9a-f]{64})$")
DEFAULT_CACHE = Path.home() / ".cache" / "adapter_registry" / "vllm"


class ResolveError(Exception):
    """A name that is ours but cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedAdapter:
    """What a request resolved to: the exported folder, the digest-named LoRA, its version and digest."""

    requested: str
    path: Path  # the exported folder vLLM loads
    lora_name: str  # NAME@sha256:<hex>
    version: str  # NAME/VERSION
    digest: str  # sha256:<hex> of the registered weight file
    cache_hit: bool  # True when the folder was already in the cache (nothing downloaded)
    note: str = ""  # e.g. why an unattested alias holder was held back

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "path": str(self.path), "lora_name": self.lora_name,
                "version": self.version, "digest": self.digest, "cache_hit": self.cache_hit, "note": self.note}  # fmt: skip


class RegistryResolver:
    """Names -> attested versions -> digest-keyed, sha256-checked folders in vLLM's format."""

    def __init__(
        self,
        store: AdapterStore,
        cache_dir: Path | str = DEFAULT_CACHE,
        stage: str = "production",
        tenants: dict[str, str] | None = None,
        max_lora_rank: int | None = None,
    ) -> None:
        if stage not in STAGES or stage == "archived":
            raise ValueError(f"stage {stage!r} is not one of candidate, staging, production")
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.stage = stage
        self.tenants = dict(tenants or {})
        self.max_lora_rank = max_lora_rank
        self._fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ names
    def target(self, model_name: str) -> tuple[AdapterVersion, str] | None:
        """The version ``model_name`` names and a note (why an alias holder was held back), or None when the
        name is not ours. Raises ResolveError for a name that is ours but cannot be served."""
        try:
            digest = DIGEST_REF.match(model_name)
            if digest:
                return self._by_digest(digest["name"], digest["hex"]), ""
            if "@" in model_name:
                name, _, stage = model_name.rpartition("@")
                return self.attested(name, stage) if self._registered(name) else None
            name, sep, number = model_name.rpartition("/")
            if sep and number.isdigit() and self._registered(name):
                return self.store.get_version(name, number), ""
            adapter = self.tenants.get(model_name)
            if adapter is not None:
                return self.attested(adapter, self.stage)
            return self.attested(model_name, self.stage) if self._registered(model_name) else None
        except RegistryError as exc:
            raise ResolveError(f"{model_name!r}: {exc.message}") from exc

    def _registered(self, name: str) -> bool:
        """A registered adapter's name (MLflow names hold no '/' or ':', e.g. a hub id is never one)."""
        return bool(name) and not {"/", ":"} & set(name) and self.store.model_exists(name)

    def attested(self, name: str, stage: str) -> tuple[AdapterVersion, str]:
        """The version of ``name`` an audited promotion placed in ``stage`` (``candidate`` is not gated), and a
        note when the alias holder is another one (held back)."""
        from adapter_registry.registry.audit import AuditLog

        if stage not in STAGES or stage == "archived":
            raise ResolveError(
                f"{name}@{stage}: stage {stage!r} is not one of candidate, staging, production"
            )
        holder = self.store.holder(name, stage)
        if stage not in PROMOTION_STAGES:
            if holder is None:
                raise ResolveError(f"{name}@{stage}: no version holds {stage}")
            return holder, ""
        check = AuditLog(self.store).stage_checks(name)[stage]
        if check.ok:
            if holder is None:
                raise ResolveError(
                    f"{name}@{stage}: no version holds {stage}; promote one with `adapter-registry promote`"
                )
            return holder, ""
        if check.attested is None:
            raise ResolveError(
                f"{check.problem}; nothing attested to serve: promote a version with `adapter-registry promote`"
            )
        note = f"{check.problem}; serving the last attested version {check.attested}"
        log.warning("%s", note)
        return self.store.get_version(name, check.attested), note

    def _by_digest(self, name: str, hex_digest: str) -> AdapterVersion:
        for weights in ("adapter_model.safetensors", "adapter_model.bin"):
            found = self.store.list_versions(name=name, tag_equals={Tag.sha256(weights): hex_digest})
            if found:
                return self.store.get_version(name, found[0].version)
        raise ResolveError(f"{name}@sha256:{hex_digest}: no registered version of {name!r} has these weights")

    # ------------------------------------------------------------------------------------ files
    def resolve(self, model_name: str, base_model_name: str | None = None) -> ResolvedAdapter | None:
        """``model_name`` -> its exported folder in the digest-keyed cache (pulled on a miss); None when the
        name is not ours. ``base_model_name`` is the model vLLM serves (its ``--model``): a version trained on
        another base is refused."""
        found = self.target(model_name)
        if found is None:
            return None
        version, note = found
        if base_model_name is not None:
            problem = self.base_problem(version, base_model_name)
            if problem:
                raise ResolveError(f"{model_name!r} -> {version.ref}: {problem}")
        resolved = self.materialise(version, model_name, note)
        log.info(
            "resolved %s -> %s (%s) at %s%s", model_name, resolved.version, resolved.digest, resolved.path,
            " (cached)" if resolved.cache_hit else "",
        )  # fmt: skip
        return resolved

    def folder_of(self, version: AdapterVersion) -> Path:
        name = lora_name(version)
        return self.cache_dir / version.name / name.rpartition(":")[2]

    def materialise(self, version: AdapterVersion, requested: str = "", note: str = "") -> ResolvedAdapter:
        """The version's exported folder in the cache: reused when its files match its manifest, else pulled
        (sha256-checked) and exported. Raises ResolveError when the files do not check out or vLLM cannot take
        the adapter."""
        name = lora_name(version)
        folder = self.folder_of(version)
        digest = name.rpartition("@")[2]
        with self._lock:
            if folder.is_dir():
                problem = _cache_problem(folder)
                if problem is None:
                    return ResolvedAdapter(
                        requested or version.ref, folder, name, version.ref, digest, True, note
                    )
                log.warning("cached %s does not check out (%s): pulling it again", folder, problem)
                shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=folder.parent))
            try:
                self.store.pull(version.ref, staging / "pulled")
                export_folder(version, staging / "pulled", staging / "export", self.max_lora_rank, folder)
                try:
                    (staging / "export").rename(folder)
                except OSError:  # another process exported it first
                    if _cache_problem(folder) is not None:
                        raise
            except RegistryError as exc:
                raise ResolveError(f"{version.ref}: {exc.message}") from exc
            except ExportRefused as exc:
                raise ResolveError(str(exc)) from exc
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return ResolvedAdapter(requested or version.ref, folder, name, version.ref, digest, False, note)

    # ------------------------------------------------------------------------------------ base
    def base_problem(self, version: AdapterVersion, served: str) -> str | None:
        """Why ``version`` must not be served on the model vLLM serves (``served``: a hub id or a local folder),
        or None. A folder is compared by the fingerprint of its weights; a hub id by name."""
        trained = OFFLINE_HUB_IDS.get(version.base_id, version.base_id)
        if served in (trained, version.base_id):
            return None
        path = Path(served)
        if path.is_dir():
            fingerprint = self._fingerprint(path)
            if fingerprint and fingerprint == version.base_fingerprint:
                return None
            return (
                f"trained on base {version.base_id or '?'} ({version.base_fingerprint or 'no fingerprint'}); "
                f"vLLM serves {served} ({fingerprint or 'no weights found'})"
            )
        return f"trained on base {trained or '?'}; vLLM serves {served}"

    def _fingerprint(self, folder: Path) -> str:
        key = str(folder.resolve())
        if key not in self._fingerprints:
            from adapter_registry.bases.fingerprint import fingerprint_folder

            try:
                self._fingerprints[key] = fingerprint_folder(folder)
            except FileNotFoundError:
                self._fingerprints[key] = ""
        return self._fingerprints[key]


def _cache_problem(folder: Path) -> str | None:
    """Why a cached export cannot be reused (its files differ from its manifest), or None."""
    manifest = folder / EXPORT_MANIFEST
    if not manifest.is_file():
        return f"no {EXPORT_MANIFEST}"
    try:
        expected = json.loads(manifest.read_text())["exported_files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{EXPORT_MANIFEST} unreadable ({exc})"
    got = {k: v for k, v in sha256_folder(folder).items() if k != EXPORT_MANIFEST}
    return checksum_problem(got, expected)


def resolve(model_name: str, store: AdapterStore | None = None, **options: Any) -> ResolvedAdapter | None:
    """Resolve one name with a resolver built from ``options`` (see :class:`RegistryResolver`) or the
    environment (:func:`from_environment`)."""
    resolver = RegistryResolver(store, **options) if store is not None else from_environment()
    return resolver.resolve(model_name)


def from_environment() -> RegistryResolver:
    """A resolver configured as the plugin is, from the environment of ``vllm serve`` (see the module doc)."""
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.serving.tenants import load_tenants

    tenants_file = os.environ.get("ADAPTER_REGISTRY_TENANTS")
    rank = os.environ.get("ADAPTER_REGISTRY_VLLM_MAX_LORA_RANK")
    return RegistryResolver(
        AdapterStore.from_env(),
        cache_dir=os.environ.get("ADAPTER_REGISTRY_VLLM_CACHE") or DEFAULT_CACHE,
        stage=os.environ.get("ADAPTER_REGISTRY_VLLM_STAGE") or "production",
        tenants=load_tenants(Path(tenants_file) if tenants_file else None),
        max_lora_rank=int(rank) if rank else None,
    )


# ------------------------------------------------------------------------------------------------ the plugin
def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: register the registry resolver with vLLM.

    vLLM runs general plugins in every process it starts; registering again replaces the same resolver.
    """
    from vllm.lora.resolver import LoRAResolverRegistry

    LoRAResolverRegistry.register_resolver("adapter-registry", plugin_resolver(from_environment()))


def plugin_resolver(registry: RegistryResolver) -> Any:
    """A ``vllm.lora.resolver.LoRAResolver`` over ``registry`` (needs vLLM)."""
    import asyncio

    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    class RegistryLoRAResolver(LoRAResolver):
        """Resolves registry names for vLLM; returns None for names that are not ours, and for names that are
        ours but cannot be served (the reason is logged: vLLM answers 404)."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            try:
                resolved = await asyncio.to_thread(registry.resolve, lora_name, base_model_name)
            except ResolveError as exc:
                log.warning("not serving %s: %s", lora_name, exc)
                return None
            if resolved is None:
                return None
            return LoRARequest(
                lora_name=resolved.lora_name,
                lora_int_id=int(resolved.digest[-12:], 16) + 1,  # vLLM replaces it with its own unique id
                lora_path=str(resolved.path),
                base_model_name=base_model_name,
            )

    return RegistryLoRAResolver()
