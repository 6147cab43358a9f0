"""``adapter-registry vllm-sync``: keep running vLLM servers' adapters equal to the registry's attested holders.

For fleets that do not install the resolver plugin. Each poll:

1. reads the attested holder of the stage for every adapter (``serving.sync.RegistrySource``: an alias moved outside
   adapter-registry is held back, the last attested version is used), checks it against vLLM's rules, pulls it
   sha256-checked and exports it into the digest-keyed cache (``vllm.resolver.RegistryResolver.materialise``);
2. on every server (``GET /v1/models``), loads each holder under its digest name ``NAME@sha256:<hex>``
   (``POST /v1/load_lora_adapter``) and unloads the digest names of registered adapters that no longer hold the
   stage (``POST /v1/unload_lora_adapter``), new before old, so a moved alias never leaves a gap. When an old
   digest name cannot be unloaded by that name, it was loaded by the resolver plugin under a requested name:
   those names (``NAME@STAGE``, ``NAME``, the adapter's tenants) are unloaded, so that vLLM resolves them again;
3. with ``aliases``, also serves ``NAME@STAGE`` (and each tenant of the adapter) as names of their own, reloaded
   (unload, then load: a new LoRA id, never an in-place reload) when the holder moves. Each such name takes its
   own LoRA slot in vLLM; the resolver plugin gives the same names without extra slots.

A holder that cannot be served (vLLM's rules, another base than the server's, a load the server refused) leaves
the previous version loaded, as ``serve`` does: a bad promotion must not take a tenant offline. A server that does
not answer is reported and the others are still synced.

The endpoints are vLLM's documented runtime-loading API (https://docs.vllm.ai/en/latest/features/lora/, "Dynamically
serving LoRA Adapters"); the servers must run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. The folder paths sent
are paths in this machine's cache: the servers must see the same paths (same host, or the cache on a shared
mount).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_registry.vllm.resolver import DIGEST_REF, RegistryResolver, ResolveError

if TYPE_CHECKING:
    import httpx

    from adapter_registry.registry.entities import AdapterVersion


class VllmServerError(Exception):
    """A vLLM server answered an error (or not at all); the message names the server and the fix when known."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class VllmServer:
    """One vLLM server's adapter endpoints: ``/v1/models``, ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def models(self) -> list[dict[str, Any]]:
        """The model cards: the base model(s) (no ``parent``) and every loaded LoRA (``parent``: its base)."""
        response = self._call("GET", "/v1/models")
        return list(response.json().get("data", []))

    def load(self, name: str, path: Path) -> None:
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload(self, name: str) -> bool:
        """Unload ``name``; False when the server has no adapter of that name (404)."""
        try:
            self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        except VllmServerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        import httpx

        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise VllmServerError(f"{self.url}{path}: no answer ({type(exc).__name__}: {exc})") from exc
        if response.status_code == 200:
            return response
        hint = ""
        if response.status_code == 404 and _message(response) == "Not Found":  # the route itself is missing
            hint = " (start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)"
        raise VllmServerError(
            f"{self.url}{path}: {response.status_code}: {_message(response)}{hint}", response.status_code
        )


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if not isinstance(data, dict):
        return str(data)
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(data.get("message") or data.get("detail") or data)


def _is_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).is_absolute()


# ------------------------------------------------------------------------------------------------ reports
@dataclass
class ServerReport:
    """What one poll did on one server and what it serves afterwards."""

    url: str
    base: str = ""
    loaded: list[dict[str, str]] = field(default_factory=list)  # name, version, digest of each loaded LoRA
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # version -> why not on this server
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "base": self.base, "loaded": self.loaded, "added": self.added,
                "removed": self.removed, "refused": self.refused, "notes": self.notes,
                "errors": self.errors}  # fmt: skip


@dataclass
class SyncReport:
    """One poll: the attested holders, the holders held back or refused, and each server's report."""

    stage: str
    holders: dict[str, str] = field(default_factory=dict)  # NAME/VERSION -> digest name
    held_back: dict[str, str] = field(default_factory=dict)  # adapter -> why its alias holder is not served
    refused: dict[str, str] = field(default_factory=dict)  # NAME/VERSION -> why vLLM cannot take it
    servers: list[ServerReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s.errors for s in self.servers)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "holders": self.holders, "held_back": self.held_back,
                "refused": self.refused, "servers": [s.to_dict() for s in self.servers], "ok": self.ok}  # fmt: skip


# ------------------------------------------------------------------------------------------------ sync
@dataclass(frozen=True)
class _Wanted:
    version: AdapterVersion
    lora_name: str
    path: Path
    aliases: tuple[str, ...]


class FleetSync:
    """Loads the attested stage holders on every server, digest-named; unloads what left the stage."""

    def __init__(self, resolver: RegistryResolver, servers: list[VllmServer], aliases: bool = False) -> None:
        self.resolver = resolver
        self.servers = servers
        self.aliases = aliases

    def request_names(self, name: str) -> tuple[str, ...]:
        """The names a request may use for adapter ``name`` besides its digest name: ``NAME@STAGE``, ``NAME`` and
        its tenants (what the resolver plugin resolves)."""
        tenants = sorted(t for t, a in self.resolver.tenants.items() if a == name)
        return (f"{name}@{self.resolver.stage}", name, *tenants)

    def alias_names(self, name: str) -> tuple[str, ...]:
        """The names ``aliases`` loads for adapter ``name``: ``NAME@STAGE`` and its tenants."""
        return tuple(n for n in self.request_names(name) if n != name)

    def sync_once(self) -> SyncReport:
        """One poll over the registry and every server. Never raises for a server's error (it is reported)."""
        from adapter_registry.serving.sync import RegistrySource

        stage = self.resolver.stage
        report = SyncReport(stage)
        holders = RegistrySource(self.resolver.store, stage).holders()
        for name, (number, why) in holders.held_back.items():
            report.held_back[name] = f"version {number}: {why}"
        wanted: dict[str, _Wanted] = {}
        for version in holders.serve:
            try:
                resolved = self.resolver.materialise(version)
            except (ResolveError, ValueError) as exc:
                report.refused[version.ref] = str(exc)
                continue
            aliases = self.alias_names(version.name) if self.aliases else ()
            wanted[version.name] = _Wanted(version, resolved.lora_name, resolved.path, aliases)
            report.holders[version.ref] = resolved.lora_name
        managed = set(self.resolver.store.list_models())
        refused = {ref.rpartition("/")[0] for ref in report.refused}
        for server in self.servers:
            report.servers.append(self._sync_server(server, wanted, managed, refused))
        return report

    def _sync_server(
        self, server: VllmServer, wanted: dict[str, _Wanted], managed: set[str], refused: set[str]
    ) -> ServerReport:
        out = ServerReport(server.url)
        try:
            cards = server.models()
            base = next((c for c in cards if not c.get("parent")), {})
            out.base = str(base.get("root") or base.get("id") or "")
            loaded = {str(c["id"]): str(c.get("root") or "") for c in cards if c.get("parent")}
            checkable = bool(out.base) and (not _is_path(out.base) or Path(out.base).is_dir())
            if not checkable:
                out.notes.append(f"base {out.base or '(not listed)'} is not a folder here: bases not checked")
            failed: set[str] = set()
            for want in wanted.values():
                problem = self.resolver.base_problem(want.version, out.base) if checkable else None
                if problem:
                    out.refused[want.version.ref] = problem
                    continue
                try:
                    self._load(server, want, loaded, out)
                except VllmServerError as exc:  # this adapter only; its previous version keeps serving
                    if exc.status is None:
                        raise
                    out.errors.append(f"loading {want.version.ref}: {exc}")
                    failed.add(want.version.name)
            keep = (
                refused | failed | {w.version.name for w in wanted.values() if w.version.ref in out.refused}
            )
            for card_name in list(loaded):
                digest = DIGEST_REF.match(card_name)
                if not digest or digest["name"] not in managed or digest["name"] in keep:
                    continue  # not ours; or its new holder is refused: the old version keeps serving
                holder = wanted.get(digest["name"])
                if holder is not None and holder.lora_name == card_name:
                    continue
                if server.unload(card_name):
                    out.removed.append(card_name)
                    continue
                # not loaded under its digest name: the resolver loaded it under a name a request used
                for alias in self.request_names(digest["name"]):
                    if alias not in (holder.aliases if holder else ()) and server.unload(alias):
                        out.removed.append(alias)
            out.loaded = self._loaded(server, wanted)
        except VllmServerError as exc:  # reported (the CLI prints it on stderr), never logged on stdout
            out.errors.append(str(exc))
        return out

    @staticmethod
    def _load(server: VllmServer, want: _Wanted, loaded: dict[str, str], out: ServerReport) -> None:
        """Load ``want`` under its digest name (and its aliases, each reloaded when it names another folder)."""
        if want.lora_name not in loaded:
            server.load(want.lora_name, want.path)
            out.added.append(want.lora_name)
        for alias in want.aliases:
            root = loaded.get(alias)
            if root is not None and Path(root) == want.path:
                continue
            if root is not None:
                server.unload(alias)
            server.load(alias, want.path)
            out.added.append(alias)

    @staticmethod
    def _loaded(server: VllmServer, wanted: dict[str, _Wanted]) -> list[dict[str, str]]:
        by_folder = {w.path: w for w in wanted.values()}
        rows = []
        for card in server.models():
            if not card.get("parent"):
                continue
            card_name, root = str(card["id"]), str(card.get("root") or "")
            want = by_folder.get(Path(root)) if root else None
            digest = DIGEST_REF.match(card_name)
            rows.append({
                "name": card_name,
                "version": want.version.ref if want else "",
                "digest": f"sha256:{digest['hex']}" if digest else (want.lora_name.rpartition("@")[2] if want else ""),
                "current": "yes" if want is not None and (card_name == want.lora_name or card_name in want.aliases)
                else "no",
            })  # fmt: skip
        return rows
