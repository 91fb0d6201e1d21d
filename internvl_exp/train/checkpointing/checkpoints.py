"""Complete checkpoints: which `checkpoint-N` folders can be resumed from, and which may be deleted.

A checkpoint counts only once its marker file (`checkpoint_complete.json`) exists. InternVLTrainer writes it
after the Trainer has saved everything (weights, optimizer, scheduler, RNG states of every rank, trainer_state.json
with the step, i.e. the data position) and after a barrier across all ranks, so a process killed during a save
(SIGKILL, OOM, node loss) leaves a folder without the marker, which is skipped with a warning.

Retention (`trainer.save_total_limit`) runs after the marker and counts complete checkpoints only; the newest
complete one is never deleted (HF's own rotation runs before our marker exists and would count the half-saved
folder as "the newest", so InternVLTrainer turns it off and calls `retain` instead).

Light: standard library only (the Hydra callback lists checkpoints before torch is imported).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
PREFIX = "checkpoint"
_STEP = re.compile(rf"^{PREFIX}-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named `checkpoint-N`, else None."""
    m = _STEP.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


@dataclass(frozen=True)
class Checkpoints:
    """The `checkpoint-N` folders of one directory, oldest first."""

    complete: list[Path]
    incomplete: list[Path]

    @property
    def newest(self) -> Path | None:
        return self.complete[-1] if self.complete else None


def list_checkpoints(folder: Path) -> Checkpoints:
    folder = Path(folder)
    found = sorted(
        (p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None) if folder.is_dir() else [],
        key=lambda p: checkpoint_step(p),
    )
    return Checkpoints([p for p in found if is_complete(p)], [p for p in found if not is_complete(p)])


def warn_incomplete(found: Checkpoints) -> None:
    for p in found.incomplete:
        log.warning("skipping checkpoint %s: it has no %s (its save was interrupted), so it cannot be resumed from",
                    p, MARKER)


def newest_complete(folder: Path, warn: bool = True) -> Path | None:
    """The complete checkpoint with the highest step in `folder` (None if there is none); incomplete ones are
    named in a warning."""
    found = list_checkpoints(folder)
    if warn:
        warn_incomplete(found)
    return found.newest


def write_marker(path: Path, info: dict[str, Any]) -> None:
    """Mark `path` complete: written last, atomically (rename), and flushed so it never precedes the files."""
    path = Path(path)
    tmp = path / f".{MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path / MARKER)


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text())


def retain(folder: Path, limit: int | None, protect: Iterable[Path | str | None] = ()) -> list[Path]:
    """Keep the newest `limit` complete checkpoints (and those in `protect`); delete older complete ones and every
    incomplete one older than the newest complete (it can never be resumed from). The newest complete checkpoint
    always stays. No limit (None or <= 0): delete nothing. Returns what was deleted. Main process only."""
    if limit is None or limit <= 0:
        return []
    found = list_checkpoints(folder)
    if not found.complete:
        return []
    keep = set(found.complete[-max(limit, 1):])
    keep |= {Path(p).resolve() for p in protect if p} & {p.resolve() for p in found.complete}
    keep = {p.resolve() for p in keep}
    newest_step = checkpoint_step(found.complete[-1])
    doomed = [p for p in found.complete if p.resolve() not in keep]
    doomed += [p for p in found.incomplete if checkpoint_step(p) < newest_step]
    for p in doomed:
        log.info("retention (trainer.save_total_limit=%d): deleting %s", limit, p)
        shutil.rmtree(p, ignore_errors=True)
    return doomed
