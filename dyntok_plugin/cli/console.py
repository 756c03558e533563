"""Terminal side of the ``dyntok`` command: progress bars, plain-text tables and one-line error text."""

from __future__ import annotations

from collections.abc import Sequence
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
    """A tqdm bar on stderr (silent when stderr is not a terminal), or a no-op without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="frame", disable=None, leave=False)


def decode(path: str, frames: int) -> tuple[VideoInfo, np.ndarray]:
    """The video's metadata and ``frames`` uniformly sampled frames, with a progress bar while decoding."""
    info = probe_video(path)
    with progress(frames, f"decoding {Path(path).name}") as bar:
        video = load_video(path, frames, progress=bar.update)
    return info, video


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Right-aligned plain-text table."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type name when it has none), for stderr."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
