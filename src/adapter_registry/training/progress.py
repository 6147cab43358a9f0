"""Training progress for people: a live bar on a terminal, a plain line now and then in a log.

``ProgressLine`` is the ``loop.Progress`` the pipeline's train node gives the loop (with its MLflow logger, through
``Progresses``): step/total, the last training loss, the last validation loss and an ETA, on stderr. On a terminal
that is a rich progress bar; when stderr is not a terminal (``make run > log``, CI) one plain line every
``seconds`` (10) and at each validation, so a log shows progress without a line per step.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from adapter_registry.training.loop import TrainResult


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class ProgressLine:
    """Step, loss, validation loss and ETA of one training run on ``stream`` (stderr), live on a terminal."""

    def __init__(self, label: str, seconds: float = 10.0, stream: IO[str] | None = None) -> None:
        self.label = label
        self.seconds = seconds  # between two plain lines (not a terminal)
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._task: Any = None

    # ------------------------------------------------------------------------------------------ loop.Progress
    def started(self, total: int, phase: str, done: TrainResult) -> None:
        self.total, self.phase = total, phase
        self.first = done.steps  # a resumed run's ETA counts only its own steps
        self.step = done.steps
        self.loss: float | None = done.train_loss[-1][1] if done.train_loss else None
        self.val: tuple[int, float] | None = done.val_loss[-1] if done.val_loss else None
        self.began = self.last_line = time.perf_counter()
        if self.stream.isatty():
            self._start_bar()
        else:
            resumed = f", resumed at step {done.steps}" if done.steps else ""
            self._write(f"{self.label} {phase}: {total} steps{resumed}")

    def stepped(self, step: int, loss: float) -> None:
        self.step, self.loss = step, loss
        if self._bar is not None:
            self._update_bar()
        elif time.perf_counter() - self.last_line >= self.seconds:
            self._write(self.line())

    def validated(self, step: int, loss: float) -> None:
        self.val = (step, loss)
        if self._bar is not None:
            self._update_bar()
        else:
            self._write(self.line())

    def finished(self, result: TrainResult) -> None:
        if self._bar is not None:
            self._update_bar()
            self._bar.stop()
            self._bar = None
        how = "stopped early" if result.stopped_early else "done"
        best = (
            f", best validation loss {result.best_val_loss:.4f} at step {result.best_step}"
            if result.val_loss
            else ""
        )
        self._write(
            f"{self.label} {self.phase}: {how} after {result.steps} steps in {duration(result.wall_s)}{best}"
        )

    # ------------------------------------------------------------------------------------------ rendering
    def eta(self) -> float | None:
        """Seconds left at this run's pace so far (None before its first step); early stopping may end it sooner."""
        done = self.step - self.first
        if done <= 0:
            return None
        return (time.perf_counter() - self.began) / done * (self.total - self.step)

    def figures(self, compact: bool = False) -> str:
        """``loss 0.4120  val 0.3980 @100  1.8 s/step  ETA 20m24s`` (``compact``, beside a bar: ``loss 0.4120  val
        0.3980  ETA 20m24s``)."""
        parts = [f"loss {self.loss:.4f}" if self.loss is not None else "loss -"]
        parts.append(
            (f"val {self.val[1]:.4f}" + ("" if compact else f" @{self.val[0]}")) if self.val else "val -"
        )
        done = self.step - self.first
        if done > 0 and not compact:
            parts.append(f"{(time.perf_counter() - self.began) / done:.2f} s/step")
        eta = self.eta()
        parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA -")
        return "  ".join(parts)

    def line(self) -> str:
        """One plain line: ``acme_support_lora train: step 120/800 (15%)  loss 0.4120  val ...``."""
        share = self.step / self.total if self.total else 1.0
        return f"{self.label} {self.phase}: step {self.step}/{self.total} ({share:.0%})  {self.figures()}"

    def _write(self, text: str) -> None:
        self.last_line = time.perf_counter()
        print(text, file=self.stream, flush=True)

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn(f"{self.label} {self.phase}"),
            MofNCompleteColumn(),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[figures]}"),
            console=Console(file=self.stream),
            auto_refresh=False,  # refreshed at each step: no thread left behind if training fails
        )
        self._task = self._bar.add_task(
            "train", total=self.total, completed=self.step, figures=self.figures()
        )
        self._bar.start()

    def _update_bar(self) -> None:
        self._bar.update(self._task, completed=self.step, figures=self.figures(True))
        self._bar.refresh()


class Progresses:
    """Several ``loop.Progress`` told the same thing (the terminal line and the MLflow logger)."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners = [p for p in listeners if p is not None]

    def started(self, total: int, phase: str, done: TrainResult) -> None:
        for p in self.listeners:
            p.started(total, phase, done)

    def stepped(self, step: int, loss: float) -> None:
        for p in self.listeners:
            p.stepped(step, loss)

    def validated(self, step: int, loss: float) -> None:
        for p in self.listeners:
            p.validated(step, loss)

    def finished(self, result: TrainResult) -> None:
        for p in self.listeners:
            p.finished(result)
