"""Video decoding with PyAV: uniform frame sampling as the LLaVA-OneVision video loaders do it.

LLaVA-NeXT and lmms-eval pick `np.linspace(0, total - 1, num_frames, dtype=int)` over the
frame count; `load_video` does the same and returns RGB frames as one uint8 array.
Every failure (missing file, not a video, corrupt or truncated stream, too few frames) raises an
exception whose message names the file, the problem and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["VideoError", "VideoInfo", "load_video", "probe_video", "sample_indices"]


class VideoError(ValueError):
    """A file that cannot be used as a video: not a video, corrupt, or too short."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    path: str
    frames: int
    width: int
    height: int
    fps: float
    codec: str


def _import_av():
    try:
        import av
    except ImportError as err:
        raise ImportError(
            "decoding video needs PyAV: pip install 'dyntok-plugin[video]' (or: pip install av)"
        ) from err
    return av


def sample_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread uniformly over `total_frames` (first and last included)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if total_frames < num_frames:
        raise VideoError(
            f"the video has {total_frames} frames, fewer than the {num_frames} asked for; "
            f"ask for at most {total_frames} frames"
        )
    return np.linspace(0, total_frames - 1, num_frames, dtype=int)


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video file not found: {str(p)!r}; check the path")
    if not p.is_file():
        raise VideoError(f"{str(p)!r} is not a file; give the path of a video file")
    return p


def _open(av, p: Path):
    try:
        container = av.open(str(p))
    except av.FFmpegError as err:
        raise VideoError(
            f"{str(p)!r} cannot be opened as a video ({err.__class__.__name__}: {err.strerror or err}): it is not "
            "a video, or it is truncated or damaged; give an mp4/mkv/avi/webm/mpg file that a video player can open"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{str(p)!r} has no video stream; give a file that contains video")
    return container


def _count_frames(av, container, p: Path) -> int:
    """Frame count from the header, else from the packets (cheap: no decoding)."""
    stream = container.streams.video[0]
    if stream.frames > 0:
        return int(stream.frames)
    try:
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as err:
        raise VideoError(f"{str(p)!r} is corrupt: demuxing failed ({err}); re-encode or replace the file") from None
    container.seek(0)
    return count


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size, frame rate and codec of the first video stream, without decoding frames."""
    av = _import_av()
    p = _check_path(path)
    with _open(av, p) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        return VideoInfo(
            path=str(p),
            frames=_count_frames(av, container, p),
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            fps=fps,
            codec=stream.codec_context.name,
        )


def _decode_selected(av, p: Path, wanted: np.ndarray, progress: Callable[[int], None] | None) -> tuple[list, int]:
    """Decode up to the last wanted frame, keeping the frames at `wanted`; returns them and the decoded count.

    A decoding error after the first frame ends the stream there (a truncated file), with a warning.
    """
    targets = {int(i): n for n, i in enumerate(wanted)}
    keep: list = [None] * len(wanted)
    last = int(wanted[-1]) if len(wanted) else -1
    decoded = 0
    with _open(av, p) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size: tuple[int, int] | None = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                slot = targets.get(index)
                if slot is not None:
                    if size is None:
                        size = (frame.width, frame.height)
                    keep[slot] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                    if progress is not None:
                        progress(1)
                if index >= last and len(wanted):
                    break
        except av.FFmpegError as err:
            if decoded == 0:
                raise VideoError(
                    f"{str(p)!r} is corrupt: no frame decodes ({err.strerror or err}); re-encode or replace the file"
                ) from None
            logger.warning("%r: decoding stopped after %d frames (%s)", str(p), decoded, err.strerror or err)
    return keep, decoded


def load_video(
    path: str | os.PathLike,
    num_frames: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Decode `num_frames` frames sampled uniformly over the video, as uint8 RGB `(F, H, W, 3)`.

    Sampling follows LLaVA-OneVision (`np.linspace` over the frame count). When the header
    overstates the frame count, the count actually decoded is used instead. `progress`, if given,
    is called with 1 for every kept frame (e.g. `tqdm.update`).
    """
    sample_indices(num_frames, num_frames)
    av = _import_av()
    p = _check_path(path)
    with _open(av, p) as container:
        total = _count_frames(av, container, p)
    if total == 0:
        raise VideoError(f"{str(p)!r} contains no video frames; give a non-empty video")
    if total < num_frames:
        raise VideoError(
            f"{str(p)!r} has {total} frames, fewer than the {num_frames} asked for; ask for at most {total} frames"
        )
    wanted = sample_indices(total, num_frames)
    frames, decoded = _decode_selected(av, p, wanted, progress)
    if decoded == 0:
        raise VideoError(f"{str(p)!r} is corrupt: no frame could be decoded; re-encode or replace the file")
    if any(frame is None for frame in frames):
        logger.warning(
            "%r: the header announces %d frames but only %d decode (truncated file?); sampling over those %d",
            str(p), total, decoded, decoded,
        )
        wanted = sample_indices(decoded, num_frames)
        frames, _ = _decode_selected(av, p, wanted, None)
        if any(frame is None for frame in frames):
            raise VideoError(f"{str(p)!r} is corrupt: frames vanished between two decodes; replace the file")
    return np.stack(frames)

