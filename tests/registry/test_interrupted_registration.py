"""A registration killed with ``kill -9`` part-way, then retried: the dead attempt's run ends FAILED, no version
lacks its files, and a retry with the same registration id registers exactly once.

The registering process is a real subprocess on a real sqlite store. A subclass defined here (test-only, not in the
product) pauses after one step and says so in a marker file; the test then kills it with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adapter_registry
from adapter_registry.registry.entities import RegistryError, Tag
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags

NAME = "support_sft_lora"
REGISTERS_THEN_PAUSES = """
import sys, time
from pathlib import Path
from adapter_registry.registry.store import AdapterStore

uri, adapter, marker, pause_after, registration_id = sys.argv[1:6]


class PausesAfterAStep(AdapterStore):
    def _pause(self, step: str, run_id: str) -> None:
        if step == pause_after:
            Path(marker).write_text(run_id)
            time.sleep(600)  # killed here

    def _verify_upload(self, run_id, checksums):
        super()._verify_upload(run_id, checksums)
        self._pause("upload", run_id)

    def _create_version(self, model_name, run_id, tags, description):
        version = super()._create_version(model_name, run_id, tags, description)
        self._pause("version", run_id)
        return version


PausesAfterAStep(uri).register_adapter(
    "support_sft_lora", Path(adapter), {"ar.recipe.name": "support_sft_lora"}, {"loss": 0.4},
    registration_id=registration_id or None,
)
"""


def kill_registration_after(store: AdapterStore, adapter_dir: Path, step: str, registration_id: str) -> str:
    """Start a registration in a subprocess, SIGKILL it once ``step`` is done; the id of the run it used."""
    marker = adapter_dir.parent / f"paused-after-{step}"
    env = {**os.environ, "PYTHONPATH": str(Path(adapter_registry.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", REGISTERS_THEN_PAUSES, store.tracking_uri, str(adapter_dir), str(marker), step,
         registration_id],
        env=env, cwd=Path.cwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out = process.communicate()[0].decode(errors="replace")
            pytest.fail(f"the registration never reached {step!r}: {out[-3000:]}")
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()  # reaped: its pid is gone, as after any crash
    return marker.read_text()


def retry(store: AdapterStore, adapter_dir: Path, registration_id: str | None):
    return store.register_adapter(
        NAME, adapter_dir, lineage_tags(), GOOD_METRICS, registration_id=registration_id
    )


def test_killed_after_upload_the_run_fails_and_a_retry_registers_once(
    store: AdapterStore, adapter_dir: Path
) -> None:
    dead_run = kill_registration_after(store, adapter_dir, "upload", "recipe-ab12-run-1")
    assert store.run_info(dead_run)["status"] == "RUNNING"  # what a crash leaves
    assert store.list_versions() == []  # uploaded files, but no version

    version = retry(store, adapter_dir, "recipe-ab12-run-1")
    assert store.run_info(dead_run)["status"] == "FAILED"
    assert (version.version, version.stage) == (1, "candidate")
    assert version.run_id != dead_run and version.tags[Tag.REGISTRATION_ID] == "recipe-ab12-run-1"

    again = retry(store, adapter_dir, "recipe-ab12-run-1")
    assert again.version == 1 and [v.version for v in store.list_versions()] == [1]


def test_killed_after_the_version_a_retry_returns_that_version(
    store: AdapterStore, adapter_dir: Path, tmp_path: Path
) -> None:
    dead_run = kill_registration_after(store, adapter_dir, "version", "recipe-ab12-run-2")
    [orphan] = store.list_versions()  # complete, but its caller never heard of it, and no alias yet
    assert orphan.aliases == ()
    store.pull(f"{NAME}/{orphan.version}", tmp_path / "pulled")  # every file there, every sha256 right

    version = retry(store, adapter_dir, "recipe-ab12-run-2")
    assert version.version == orphan.version == 1 and version.run_id == dead_run
    assert version.aliases == ("candidate",)  # the retry finished what the first attempt began
    assert store.run_info(dead_run)["status"] == "FAILED"
    assert [v.version for v in store.list_versions()] == [1]


def test_a_dead_registration_without_an_id_is_failed_by_the_next_registration(
    store: AdapterStore, adapter_dir: Path
) -> None:
    dead_run = kill_registration_after(store, adapter_dir, "upload", "")
    assert store.run_info(dead_run)["status"] == "RUNNING"
    retry(store, adapter_dir, None)
    assert store.run_info(dead_run)["status"] == "FAILED"
    assert store.fail_dead_registrations() == []  # nothing left to clean


def test_a_finished_registration_is_found_by_its_id_and_ids_are_checked(
    store: AdapterStore, adapter_dir: Path
) -> None:
    first = retry(store, adapter_dir, "nightly-2026-01-01")
    second = retry(store, adapter_dir, "nightly-2026-01-02")
    assert (first.version, second.version) == (1, 2)
    assert retry(store, adapter_dir, "nightly-2026-01-01").version == 1
    assert store.holder(NAME, "candidate").version == 2  # finding an old registration moves no alias back
    assert store.find_registration(NAME, "nightly-2026-01-02").version == 2
    assert store.find_registration(NAME, "never") is None
    with pytest.raises(RegistryError, match=r"registration_id 'a b' must be"):
        retry(store, adapter_dir, "a b")
    with pytest.raises(RegistryError, match=r"tags \['ar.registration.id'\] are written by the store"):
        store.register_adapter(NAME, adapter_dir, {Tag.REGISTRATION_ID: "x"}, GOOD_METRICS)
