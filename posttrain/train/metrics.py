"""Where metrics go: OUT/metrics.jsonl (always), TensorBoard (when installed), a progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class MetricsSink:
    """Appends one JSON object per step to OUT/metrics.jsonl.

    On resume (`truncate_after=step`), lines for steps after the checkpoint are dropped
    first: the interrupted run wrote them, and the resumed run writes them again.
    """

    def __init__(self, out_dir: Path, truncate_after: int = 0):
        self.path = Path(out_dir) / "metrics.jsonl"
        if truncate_after and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= truncate_after]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif not truncate_after:
            self.path.write_text("")
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except Exception:  # tensorboard not installed: the JSONL file is the record
            self.tb = None

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, record["step"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NullSink:
    """What ranks other than 0 write metrics to."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


class Progress:
    """A rich progress bar with ETA and the live loss; a no-op when disabled."""

    def __init__(self, description: str, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                    MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                    TextColumn("{task.fields[info]}"),
                                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            self.task = self.bar.add_task(description, total=total, completed=start, loss="-",
                                          info="")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def update(self, step: int, loss: float | None, info: str = "") -> None:
        """Advance to `step`; `info` is a short live read-out (e.g. "reward 1.23")."""
        if self.enabled:
            shown = "-" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"
            self.bar.update(self.task, completed=step, loss=shown, info=info)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
