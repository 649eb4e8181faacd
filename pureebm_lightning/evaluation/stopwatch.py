"""Seconds per stage of an evaluation, summed over every invocation into its folder."""

from __future__ import annotations

import json
import time
from pathlib import Path


class Stopwatch:
    """Seconds per stage, this invocation and summed over every invocation into --out (timings.json), so a
    resumed run still reports what the whole reproduction cost."""

    def __init__(self, out: Path) -> None:
        self.path, self.start, self.now = out / "timings.json", time.time(), {}
        self.total = json.loads(self.path.read_text())["total_s"] if self.path.is_file() else {}

    def lap(self, stage: str) -> None:
        seconds = round(time.time() - self.start - sum(self.now.values()), 1)
        self.now[stage] = seconds
        self.total[stage] = round(self.total.get(stage, 0.0) + seconds, 1)
        self.path.write_text(json.dumps({"this_invocation_s": self.now, "total_s": self.total}, indent=1))
