"""Screenshots of what a user sees in MLflow's own UI and in the HTML lineage, taken by headless Chromium.

    python benchmarks/ui_screenshots.py acme_support_lora/1 [--tracking-uri sqlite:///mlflow.db] [--out docs]

Starts `mlflow ui` on a free local port against the registry, then saves ``mlflow_run.png`` (the version's training
run: parameters, datasets, metrics), ``mlflow_version.png`` (the registered version: its description is the model
card) and ``lineage.png`` (``adapter-registry lineage REF --format html``). Needs ``chromium`` (or
``chromium-browser``, ``google-chrome``) on PATH; nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def screenshot(browser: str, url: str, out: Path, size: str = "1400,1000", wait_ms: int = 20000) -> None:
    """One page as PNG; ``wait_ms`` of virtual time lets a JavaScript page (MLflow's UI) fetch and draw."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
             f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="NAME/VERSION or NAME@STAGE")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print(f"error: no headless browser on PATH (looked for {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    from adapter_registry.environment import offline_defaults

    offline_defaults()
    from mlflow import MlflowClient

    from adapter_registry.registry.lineage import lineage_of
    from adapter_registry.registry.lineage_render import to_html
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(args.tracking_uri)
    version = store.resolve(args.ref)
    experiment = MlflowClient(args.tracking_uri).get_run(version.run_id).info.experiment_id
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "lineage.html"
        page.write_text(to_html(lineage_of(store, version.ref)))
        screenshot(browser, page.as_uri(), args.out / "lineage.png", "1400,1300", wait_ms=1000)
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        view = "?workflowType=machine_learning"  # MLflow's "Model training" view, not GenAI
        screenshot(browser, f"{base}/#/experiments/{experiment}/runs/{version.run_id}{view}",
                   args.out / "mlflow_run.png", "1800,1480")  # fmt: skip
        screenshot(browser, f"{base}/#/models/{version.name}/versions/{version.version}{view}",
                   args.out / "mlflow_version.png", "1800,1500")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
