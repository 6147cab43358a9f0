"""One writer at a time per adapter: what keeps concurrent promotions from forking the audit chain.

A promotion reads the audit trail and the stage holders, decides, moves aliases and appends the next event; two of
them interleaving on one adapter would both append event N+1 (a fork) and leave the aliases saying something the
trail does not. Every write that reads-then-writes an adapter's state (promote, rollback, an audit append, the
last step of a registration) therefore runs inside :func:`writer_lock`, which every client can take:

- **sqlite file** (one machine): an OS lock (``fcntl.flock``) on ``<db>.lock`` beside the database. The kernel
  drops it when its holder dies.
- **tracking server** (``http://``, or any other store): a *ticket* through MLflow's own API. A ticket is a new
  version of the registered model ``adapter-registry.locks`` tagged with the adapter it is for; MLflow numbers
  versions with the database's primary key (max + 1, retried on conflict: ``SqlAlchemyStore.create_model_version``),
  so ticket numbers are unique and a ticket is only numbered once every lower one is committed. A writer holds the
  lock when no unreleased, unexpired ticket of the same adapter has a lower number (first come, first served); it
  releases by tagging its ticket ``released``. A ticket expires ``lease_s`` after it was taken or last renewed;
  its writer renews it every ``lease_s / 3`` while it waits and while it holds the lock (a heartbeat thread), so a
  writer that died holds the others up for at most ``lease_s``. A release that failed (the server was down) is
  retried by the next lock this process takes.
  Registered-model tags were not used: MLflow writes them with ``session.merge`` (the last writer wins), so
  writing a token and reading it back can let two writers both believe they hold it.

Under MLflow's basic-auth a writer needs EDIT on ``adapter-registry.locks`` (as on the audit experiment).
The lock is re-entrant within one thread, so a promotion holding it can append its audit event.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapter_registry.registry.entities import RegistryError

LEASE_S = 30.0
WAIT_S = 600.0
_held = threading.local()  # names this thread holds, per lock backend
_unreleased: list[tuple[TicketBackend, int]] = []  # tickets whose release failed, released at the next lock


@dataclass(frozen=True)
class Ticket:
    number: int
    holder: str
    expires_ms: int


class TicketBackend(Protocol):
    """What a ticket lock needs of the store (``AdapterStore`` implements it)."""

    def take_ticket(self, name: str, holder: str, expires_ms: int) -> int: ...
    def live_tickets(self, name: str) -> list[Ticket]: ...
    def renew_ticket(self, number: int, expires_ms: int) -> None: ...
    def release_ticket(self, number: int) -> None: ...


def holder_id(user: str) -> str:
    return f"{user}@{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def holds(key: str, name: str) -> bool:
    """Whether this thread holds the writer lock of ``name`` in registry ``key`` already."""
    return f"{key}\0{name}" in _holding()


def _holding() -> set[str]:
    if not hasattr(_held, "names"):
        _held.names = set()
    names: set[str] = _held.names
    return names


@contextlib.contextmanager
def writer_lock(
    key: str,
    name: str,
    *,
    file: Path | None = None,
    tickets: TicketBackend | None = None,
    user: str = "",
    lease_s: float = LEASE_S,
    wait_s: float = WAIT_S,
) -> Iterator[None]:
    """Hold the writer lock of adapter ``name`` (``key`` names the registry, for re-entrance) for the block."""
    token = f"{key}\0{name}"
    if token in _holding():
        yield
        return
    if file is not None:
        cm = _file_lock(file, name, wait_s)
    else:
        assert tickets is not None
        cm = _ticket_lock(tickets, name, holder_id(user or "unknown"), lease_s, wait_s)
    with cm:
        _holding().add(token)
        try:
            yield
        finally:
            _holding().discard(token)


@contextlib.contextmanager
def _file_lock(path: Path, name: str, wait_s: float) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        "LOCKED", f"another writer has held {path} for over {wait_s:.0f} s while changing {name!r}; "
                        "find it with: fuser " + str(path),
                    ) from None  # fmt: skip
                time.sleep(0.01 + random.random() * 0.04)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _ticket_lock(
    backend: TicketBackend, name: str, holder: str, lease_s: float, wait_s: float
) -> Iterator[None]:
    def expiry() -> int:
        return int((time.time() + lease_s) * 1000)

    while _unreleased:
        owner, old = _unreleased.pop()
        with contextlib.suppress(RegistryError):
            owner.release_ticket(old)
    number = backend.take_ticket(name, holder, expiry())
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(lease_s / 3):
            with contextlib.suppress(RegistryError):
                backend.renew_ticket(number, expiry())

    beat = threading.Thread(target=heartbeat, name=f"writer-lock-{name}", daemon=True)
    beat.start()
    try:
        deadline = time.monotonic() + wait_s
        pause = 0.02
        while True:
            now_ms = int(time.time() * 1000)
            ahead = [t for t in backend.live_tickets(name) if t.number < number and t.expires_ms > now_ms]
            if not ahead:
                break
            if time.monotonic() > deadline:
                first = min(ahead, key=lambda t: t.number)
                raise RegistryError(
                    "LOCKED", f"{name!r} is being changed by {first.holder} (ticket {first.number} of "
                    f"adapter-registry.locks) for over {wait_s:.0f} s; retry later (a writer that died stops "
                    f"holding it {lease_s:.0f} s after its last heartbeat)",
                )  # fmt: skip
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 1.5, 0.5)
        yield
    finally:
        done.set()
        beat.join()
        try:
            backend.release_ticket(number)
        except RegistryError:
            _unreleased.append((backend, number))  # it expires after lease_s anyway
