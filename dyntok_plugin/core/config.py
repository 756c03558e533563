"""`DynTokConfig`: the validated, live-editable settings of DynTok."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

MARKERS = ("row", "frame", "video", "none")
SIMILARITIES = ("vision", "projected")


@dataclass
class DynTokConfig:
    """Settings of DynTok; every assignment is validated, so a live config never holds a bad value.

    Args:
        threshold (`float` or `None`, defaults to `0.7`): a token joins its left neighbour's group iff their cosine
            similarity is strictly greater. `>= 1` merges nothing, `< -1` merges every row into one token.
            `None` lets a budget (`max_tokens` or `target_ratio`) alone decide.
        train_threshold_range (`(lo, hi)` or `None`): in training mode draw the threshold `U(lo, hi)` per video and
            per call (DynTok's second training stage). Eval mode always uses `threshold`.
        similarity (`"vision"` or `"projected"`): compare the pooled vision-encoder features (paper) or the pooled
            projected features.
        marker (`"row"`, `"frame"`, `"video"` or `"none"`): where the grid marker goes: after each row (DynTok),
            after each frame, once after the video (stock Hugging Face LLaVA-OneVision layout), or nowhere.
        max_tokens (`int` or `None`): per-video budget, markers included, met exactly; a cap on the threshold (also
            on drawn training thresholds: it bounds the longest sequence any step, or any rank, can draw).
        target_ratio (`float` in (0, 1] or `None`): budget as a fraction of the pooled grid, `floor(ratio * F*h*w)`.
        seed (`int` or `None`): seeds the training-threshold draws; `None` uses torch's global RNG.
        pad_to_multiple_of (`int` or `None`): in training (calls with labels), pad the spliced sequence length up to a
            multiple of this, so that random thresholds give few distinct lengths (allocator and kernel selection
            costs per new length); the extra positions are padding (labels -100; masked, except in a batch that came
            unpadded, where no real position of a causal LM can attend to them). `None` pads to the longest
            sample only.
    """

    threshold: Optional[float] = 0.7
    train_threshold_range: Optional[Tuple[float, float]] = None
    similarity: str = "vision"
    marker: str = "row"
    max_tokens: Optional[int] = None
    target_ratio: Optional[float] = None
    seed: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    last_stats: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("threshold", "target_ratio", "max_tokens", "seed", "train_threshold_range", "pad_to_multiple_of"):
            object.__setattr__(self, name, _python_scalars(getattr(self, name)))
        self._validate()
        object.__setattr__(self, "_mirrors", [])
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_ready", False) and name in _FIELD_NAMES:
            value = getattr(dataclasses.replace(self, **{name: value}), name)  # validated and normalised, or raises
            object.__setattr__(self, name, value)
            self._sync_mirrors()
            return
        object.__setattr__(self, name, value)

    def update(self, **changes: Any) -> "DynTokConfig":
        """Change several fields at once (validated together), e.g. switch from a threshold to a budget."""
        unknown = set(changes) - set(_FIELD_NAMES)
        if unknown:
            raise ValueError(f"DynTokConfig has no field(s) {sorted(unknown)}; fields are {list(_FIELD_NAMES)}.")
        candidate = dataclasses.replace(self, **changes)
        for name in changes:
            object.__setattr__(self, name, getattr(candidate, name))
        self._sync_mirrors()
        return self

    def mirror_to(self, obj: Any, attribute: str) -> None:
        """Keep `obj.<attribute>` equal to `to_dict()` from now on (a host config that is saved with the model)."""
        self._mirrors.append((obj, attribute))
        setattr(obj, attribute, self.to_dict())

    def stop_mirroring(self, obj: Any) -> None:
        object.__setattr__(self, "_mirrors", [(o, a) for o, a in self._mirrors if o is not obj])

    def _sync_mirrors(self) -> None:
        for obj, attribute in self._mirrors:
            setattr(obj, attribute, self.to_dict())

    def to_dict(self) -> dict:
        """The settings as a JSON-serialisable dict (what is persisted in a host model's config)."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        if out["train_threshold_range"] is not None:
            out["train_threshold_range"] = list(out["train_threshold_range"])
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "DynTokConfig":
        """The config `to_dict()` gave (e.g. read back from a saved model config); unknown keys are an error."""
        unknown = set(values) - set(_FIELD_NAMES)
        if unknown:
            raise ValueError(f"Unknown DynTok setting(s) {sorted(unknown)}; known settings are {list(_FIELD_NAMES)}.")
        return cls(**values)

    def _validate(self) -> None:
        if self.threshold is not None:
            _require_real("threshold", self.threshold, "any finite float, or None with a budget")
            object.__setattr__(self, "threshold", float(self.threshold))
        if self.train_threshold_range is not None:
            rng = self.train_threshold_range
            if not isinstance(rng, (tuple, list)) or len(rng) != 2:
                raise ValueError(f"train_threshold_range must be a pair (lo, hi) of floats or None, got {rng!r}.")
            lo, hi = rng
            _require_real("train_threshold_range[0]", lo, "a finite float")
            _require_real("train_threshold_range[1]", hi, "a finite float")
            if lo > hi:
                raise ValueError(f"train_threshold_range must satisfy lo <= hi, got {tuple(rng)!r}.")
            object.__setattr__(self, "train_threshold_range", (float(lo), float(hi)))
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}.")
        if self.marker not in MARKERS:
            raise ValueError(f"marker must be one of {MARKERS}, got {self.marker!r}.")
        if self.max_tokens is not None:
            if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
                raise ValueError(f"max_tokens must be a positive int or None, got {self.max_tokens!r}.")
        if self.target_ratio is not None:
            _require_real("target_ratio", self.target_ratio, "a float in (0, 1]")
            if not 0.0 < self.target_ratio <= 1.0:
                raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio!r}.")
            object.__setattr__(self, "target_ratio", float(self.target_ratio))
        if self.max_tokens is not None and self.target_ratio is not None:
            raise ValueError("Give at most one budget: max_tokens or target_ratio, not both.")
        if self.threshold is None and self.max_tokens is None and self.target_ratio is None:
            raise ValueError("threshold=None needs a budget: set max_tokens or target_ratio, or give a threshold.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}.")
        multiple = self.pad_to_multiple_of
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {multiple!r}.")

    @property
    def has_budget(self) -> bool:
        """Whether a token budget (`max_tokens` or `target_ratio`) is set."""
        return self.max_tokens is not None or self.target_ratio is not None


def _python_scalars(value: Any) -> Any:
    """NumPy (or other `numbers`) scalars, 0-d arrays and arrays of pairs as plain Python ints/floats/tuples."""
    if hasattr(value, "tolist") and callable(value.tolist) and getattr(value, "ndim", None) in (0, 1):
        value = value.tolist()  # np.generic, 0-d / 1-d np.ndarray, torch scalars
    if isinstance(value, list):
        return tuple(_python_scalars(v) for v in value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _require_real(name: str, value: Any, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(DynTokConfig) if f.init)
