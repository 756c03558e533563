"""Figures for the `dyntok` command (matplotlib, Agg backend: no display needed).

- `merge_map`: frames with the pooled grid drawn on them, patches merged into their left
  neighbour shaded and group boundaries drawn thick (the style of DynTok's Figure 1).
- `ratio_plot`: ratio (tokens out / pooled tokens in) against the threshold, one curve per series.

Figure sizes are fixed by the constants below, so a caller knows the PNG size in advance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

DPI = 100
PANEL_WIDTH_IN = 4.0
TITLE_HEIGHT_IN = 0.55
RATIO_PLOT_SIZE_IN = (7.0, 4.5)
MERGED_COLOUR = (1.0, 0.35, 0.1)

__all__ = ["DPI", "merge_map", "merge_map_size", "ratio_plot"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'dyntok-plugin[demo]'") from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def merge_map_size(panels: int, frame_height: int, frame_width: int) -> tuple[int, int]:
    """Pixel size `(width, height)` of a merge map with `panels` frames of the given shape."""
    width = panels * PANEL_WIDTH_IN
    height = PANEL_WIDTH_IN * frame_height / frame_width + TITLE_HEIGHT_IN
    return round(width * DPI), round(height * DPI)


def merge_map(
    frames: np.ndarray,
    token_map: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike,
    suptitle: str = "",
) -> tuple[int, int]:
    """Draw frames `(k, H, W, 3)` with their pooled `(k, h, w)` token map; returns the PNG size written.

    A cell whose token is the same as its left neighbour's was merged into it and is shaded; the thick
    vertical lines are group boundaries inside a row.
    """
    plt = _pyplot()
    panels, height, width = frames.shape[:3]
    rows, cols = token_map.shape[1:]
    size = merge_map_size(panels, height, width)
    fig = plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    top = 1.0 - TITLE_HEIGHT_IN * DPI / size[1]
    merged = np.zeros(token_map.shape, dtype=bool)
    merged[:, :, 1:] = token_map[:, :, 1:] == token_map[:, :, :-1]
    overlay = np.zeros(token_map.shape + (4,), dtype=float)
    overlay[..., :3] = MERGED_COLOUR
    overlay[..., 3] = np.where(merged, 0.45, 0.0)
    for panel in range(panels):
        ax = fig.add_axes((panel / panels, 0.0, 1.0 / panels, top))
        ax.imshow(frames[panel], extent=(0, cols, rows, 0), aspect="auto", interpolation="bilinear")
        ax.imshow(overlay[panel], extent=(0, cols, rows, 0), aspect="auto", interpolation="nearest")
        ax.vlines(np.arange(1, cols), 0, rows, colors="white", linewidths=0.4, alpha=0.5)
        ax.hlines(np.arange(1, rows), 0, cols, colors="white", linewidths=1.2, alpha=0.9)
        r, c = np.nonzero(~merged[panel][:, 1:])
        ax.vlines(c + 1, r, r + 1, colors="white", linewidths=1.8)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_axis_off()
        ax.set_title(titles[panel], fontsize=9, pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=0.995, va="top")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return size


def ratio_plot(
    thresholds: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str,
    marks: Sequence[float] = (),
    target_ratio: float | None = None,
) -> tuple[int, int]:
    """Ratio against threshold for each named series; vertical lines at `marks`, a horizontal one at the target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=RATIO_PLOT_SIZE_IN, dpi=DPI)
    for label, ratios in series.items():
        ax.plot(thresholds, ratios, label=label, linewidth=1.6)
    for mark in marks:
        ax.axvline(mark, color="grey", linestyle="--", linewidth=0.9)
        ax.annotate(f"τ={mark:g}", (mark, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=8, color="grey", ha="right", va="bottom")
    if target_ratio is not None:
        ax.axhline(target_ratio, color="black", linestyle=":", linewidth=1.0, label=f"target {target_ratio:g}")
    ax.set_xlabel("threshold τ (merge into the left neighbour when similarity > τ)")
    ax.set_ylabel("ratio: tokens out / pooled tokens in")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return round(RATIO_PLOT_SIZE_IN[0] * DPI), round(RATIO_PLOT_SIZE_IN[1] * DPI)
