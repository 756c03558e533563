"""Per-video statistics of one DynTok call."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DynTokStats:
    """What DynTok did to one video.

    `tokens_in` is the pooled grid `F*h*w`; `tokens_out` counts markers too; `ratio = tokens_out / tokens_in`.
    `threshold` is the similarity threshold in effect: the drawn one in training, or the order statistic a budget
    lowered it to (`-inf` when the budget allows no merge boundary beyond column 0).
    """

    frames: int
    tokens_in: int
    tokens_out: int
    ratio: float
    threshold: float

    def to_dict(self) -> dict:
        """The statistics as a JSON-serialisable dict."""
        return asdict(self)


def summarize(stats: list) -> dict:
    """Totals over several videos: frames, tokens in/out and the overall ratio."""
    tokens_in = sum(s.tokens_in for s in stats)
    tokens_out = sum(s.tokens_out for s in stats)
    return {
        "videos": len(stats),
        "frames": sum(s.frames for s in stats),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "ratio": tokens_out / tokens_in if tokens_in else float("nan"),
    }
