"""DynTok's subclass of vLLM's LLaVA-OneVision: the placeholder count and the video embeddings, in budget mode.

vLLM counts a video's placeholders in `LlavaOnevisionProcessingInfo.get_num_video_tokens` (before the encoder runs)
and makes its embeddings in `_process_video_pixels`; the two lengths must agree. With DynTok settings in the model
config, the count is `dyntok_plugin.core.budget_tokens` and the embeddings are those of the Hugging Face patch:
vision tower (selected layer) -> projector -> the host's 2x2 pooling -> DynTok, with the pooled pre-projector
features as similarity features and `image_newline` as the marker. Without settings both methods are vLLM's own.
Images are never touched. This module imports vLLM; vLLM imports it when a LLaVA-OneVision model is loaded.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from vllm.config import VllmConfig
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
    LlavaOnevisionVideoPixelInputs,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from dyntok_plugin.core import budget_tokens
from dyntok_plugin.core.markers import token_floor
from dyntok_plugin.hf.common import pooled_side

from .budget import BudgetVideoCompressor
from .settings import serving_config


class DynTokLlavaOnevisionProcessingInfo(LlavaOnevisionProcessingInfo):
    """Counts a video's placeholders as DynTok's budget gives them (vLLM's own count without settings)."""

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        settings = serving_config(self.get_hf_config())
        if settings is None:
            return super().get_num_video_tokens(
                image_width=image_width, image_height=image_height, num_frames=num_frames
            )
        side = math.isqrt(self._get_num_frame_tokens(image_width=image_width, image_height=image_height))
        return budget_tokens(settings, num_frames, side, side)

    def _get_max_video_frames(self, max_tokens: int) -> int:
        """The most frames a video can have within `max_tokens` placeholders (vLLM's memory profiling). Under a
        `max_tokens` budget the count stops growing with the frames, so the frames are also held to those whose
        floor (one token per row plus markers) fits the budget."""
        settings = serving_config(self.get_hf_config())
        if settings is None or settings.max_tokens is None:
            return super()._get_max_video_frames(max_tokens)
        side = math.isqrt(self._get_num_frame_tokens(image_width=1, image_height=1))
        frames = 0
        while (token_floor(settings.marker, frames + 1, side) <= settings.max_tokens
               and budget_tokens(settings, frames + 1, side, side) <= max_tokens):
            frames += 1
        return frames


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=DynTokLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class DynTokLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision whose videos DynTok compresses when the config carries budget-mode settings."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        settings = serving_config(vllm_config.model_config.hf_config)  # bad settings fail here, at engine start
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        compressor = None
        if settings is not None:
            side = pooled_side(self.config)
            budget_tokens(settings, 1, side, side)  # a max_tokens below even one frame's floor fails here
            marker = functools.partial(getattr, self, "image_newline")
            compressor = BudgetVideoCompressor(settings, self.config.text_config.hidden_size, marker)
        self.dyntok_video = compressor  # a plain object: no parameters, nothing in the state dict

    def _process_video_pixels(self, inputs: LlavaOnevisionVideoPixelInputs):
        if self.dyntok_video is None:
            return super()._process_video_pixels(inputs)
        pixels = inputs["pixel_values_videos"]
        if isinstance(pixels, Tensor):
            frames_per_video = [pixels.shape[1]] * pixels.shape[0]
            flat = pixels.flatten(0, 1)
        else:
            frames_per_video = [len(video) for video in pixels]
            flat = torch.cat(list(pixels))
        selected = self.vision_tower(flat, feature_select_strategy=self.config.vision_feature_select_strategy)
        projected = self._pooled_grid(self.multi_modal_projector(selected))
        similarity = self._pooled_grid(selected) if self.dyntok_video.config.similarity == "vision" else None
        return self.dyntok_video.compress(projected, frames_per_video, similarity)

    def _pooled_grid(self, features: Tensor) -> Tensor:
        """`(N, g*g, C)` -> `(N, s, s, C)` through the host's own video pooling."""
        pooled = self.apply_pooling(features)
        side = math.isqrt(pooled.shape[1])
        return pooled.view(pooled.shape[0], side, side, -1)
