"""conf/logging.yml: Kedro's per-dataset lines are off by default, and conf/logging-verbose.yml brings them back."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("config", "dataset_lines"), [("logging.yml", False), ("logging-verbose.yml", True)])
def test_per_dataset_lines_only_when_asked(config: str, dataset_lines: bool) -> None:
    saved = {name: logging.getLogger(name).level for name in ("kedro", "kedro.io", "adapter_registry")}
    try:
        logging.config.dictConfig(yaml.safe_load((ROOT / "conf" / config).read_text()))
        catalog = logging.getLogger("kedro.io.data_catalog")  # "Loading data from ...", "Saving data to ..."
        assert catalog.isEnabledFor(logging.INFO) is dataset_lines
        assert logging.getLogger("kedro.runner.sequential_runner").isEnabledFor(
            logging.INFO
        )  # "Running node"
        assert logging.getLogger("adapter_registry.pipelines.train.nodes").isEnabledFor(logging.INFO)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("config", ["logging.yml", "logging-verbose.yml"])
def test_our_lines_print_as_they_are_and_kedros_colours_stay(
    config: str, capsys: pytest.CaptureFixture
) -> None:
    """A worker's line with ``[/...]`` in it (gloo's source location) raised rich's MarkupError from log.info;
    Kedro's dataset lines (verbose) still colour their names."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        logging.config.dictConfig(yaml.safe_load((ROOT / "conf" / config).read_text()))
        gloo = "[E ProcessGroupGloo] [/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] [bold]x"
        logging.getLogger("adapter_registry.training.distributed").warning("%s", gloo)
        logging.getLogger("kedro.io.data_catalog").info(
            "Saving data to %s", "model", extra={"rich_format": ["dark_orange"]}
        )
        printed = capsys.readouterr().out
        assert "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537][bold]x" in "".join(
            printed.split()
        )
        assert ("Saving data to model" in printed) is (config == "logging-verbose.yml")
        assert "dark_orange" not in printed
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        kedro_io = logging.getLogger("kedro.io")
        kedro_io.handlers.clear()
        kedro_io.propagate = True
