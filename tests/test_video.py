"""dyntok_plugin.video on the bundled real clip and on clips written or damaged on the spot."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

import media
from dyntok_plugin.video import VideoError, load_video, probe_video, sample_indices


def decode_all(path) -> np.ndarray:
    """Every frame of a file up to its first decoding error, decoded independently of the code under test."""
    frames = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    return np.stack(frames)


@pytest.fixture(scope="module")
def city_frames() -> np.ndarray:
    return decode_all(media.CITY_CLIP)


def test_probe_reports_the_bundled_clip():
    info = probe_video(media.CITY_CLIP)
    assert (info.frames, info.width, info.height) == (media.CITY_FRAMES, *media.CITY_SIZE)
    assert info.codec == "h264"
    assert info.fps == pytest.approx(25.0)


@pytest.mark.parametrize("num_frames", [1, 8, 32])
def test_load_video_samples_uniformly_like_llava_ov(city_frames, num_frames):
    video = load_video(media.CITY_CLIP, num_frames)
    assert video.dtype == np.uint8
    assert video.shape == (num_frames, media.CITY_SIZE[1], media.CITY_SIZE[0], 3)
    expected = np.linspace(0, len(city_frames) - 1, num_frames, dtype=int)  # LLaVA-NeXT / lmms-eval sampling
    np.testing.assert_array_equal(video, city_frames[expected])


def test_asking_for_every_frame_returns_them_all_in_order(city_frames):
    np.testing.assert_array_equal(load_video(media.CITY_CLIP, media.CITY_FRAMES), city_frames)


def test_sample_indices_span_the_video_and_increase():
    indices = sample_indices(190, 32)
    assert indices[0] == 0 and indices[-1] == 189
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(sample_indices(5, 5), np.arange(5))


@pytest.mark.parametrize("suffix", [".mkv", ".ts"])
def test_containers_without_a_frame_count_are_counted(tmp_path, suffix):
    frames = media.flat_frames(6)
    frames[:, :, :, 0] = np.arange(6, dtype=np.uint8)[:, None, None] * 40  # tell the frames apart
    path = media.write_clip(tmp_path / f"clip{suffix}", frames)
    assert probe_video(path).frames == 6
    video = load_video(path, 3)
    np.testing.assert_array_equal(video, decode_all(path)[[0, 2, 5]])


def test_progress_is_called_once_per_kept_frame():
    calls = []
    load_video(media.CITY_CLIP, 4, progress=calls.append)
    assert calls == [1, 1, 1, 1]


def test_overstated_frame_count_resamples_over_what_decodes(tmp_path, caplog):
    path = media.truncated_clip(tmp_path / "cut.mp4")
    announced = probe_video(path).frames
    full = decode_all(tmp_path / "cut.full.mp4")
    with caplog.at_level(logging.WARNING, logger="dyntok_plugin.video"):
        video = load_video(path, 8)
    decodable = len(decode_all(path))
    assert decodable < announced == media.CITY_FRAMES
    assert "truncated" in caplog.text and str(decodable) in caplog.text
    np.testing.assert_array_equal(video, full[np.linspace(0, decodable - 1, 8, dtype=int)])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found.*nope.mp4"):
        load_video(tmp_path / "nope.mp4", 4)


def test_folder_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="is not a file"):
        load_video(tmp_path, 4)


@pytest.mark.parametrize(
    "make, message",
    [
        (media.text_file, "cannot be opened as a video"),
        (media.headless_clip, "cannot be opened as a video"),
        (media.audio_only, "has no video stream"),
        (media.garbage_payload_clip, "is corrupt"),
    ],
)
def test_unusable_files_raise_a_clear_error(tmp_path, make, message):
    path = make(tmp_path / ("in.wav" if make is media.audio_only else "in.mp4"))
    with pytest.raises(VideoError, match=message) as info:
        load_video(path, 4)
    assert str(path) in str(info.value)


def test_fewer_frames_than_asked(tmp_path):
    path = media.short_clip(tmp_path / "short.mp4", count=5)
    assert len(load_video(path, 5)) == 5
    with pytest.raises(VideoError, match="has 5 frames, fewer than the 6 asked for; ask for at most 5"):
        load_video(path, 6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_frame_counts(bad):
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        load_video(media.CITY_CLIP, bad)
