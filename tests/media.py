"""Video files for tests: the bundled real clip, and clips written on the spot with PyAV.

The bundled clip (`assets/city_cc0.mp4`, CC0) is busy real content. The synthetic "flat" clip is a
smooth colour gradient (a clear sky) held still, the kind of frame DynTok should compress hardest.
The damaged files are made from the real clip so they look like real-world failures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CITY_CLIP = REPO / "assets" / "city_cc0.mp4"
CITY_FRAMES = 190
CITY_SIZE = (480, 270)


def write_clip(path: Path, frames: np.ndarray, fps: int = 25, faststart: bool = False) -> Path:
    """Encode uint8 RGB frames `(F, H, W, 3)` (even H, W) as H.264 in `path`."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "ultrafast"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode())
    return path


def flat_frames(count: int = 8, width: int = 320, height: int = 180) -> np.ndarray:
    """A still, smooth top-to-bottom colour gradient: almost no detail anywhere."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = np.array([70, 120, 200], dtype=np.float32)
    bottom = np.array([180, 210, 240], dtype=np.float32)
    frame = np.broadcast_to(top + (bottom - top) * t, (height, width, 3))
    return np.repeat(frame[None].round().astype(np.uint8), count, axis=0)


def flat_clip(path: Path, count: int = 8) -> Path:
    return write_clip(path, flat_frames(count))


def short_clip(path: Path, count: int = 5) -> Path:
    """The first `count` frames of the real clip, re-encoded."""
    import av

    with av.open(str(CITY_CLIP)) as src:
        frames = []
        for frame in src.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return write_clip(path, np.stack(frames))


def garbage_payload_clip(path: Path, seed: int = 0) -> Path:
    """The real clip with its container intact but every coded byte replaced by noise: undecodable."""
    data = bytearray(CITY_CLIP.read_bytes())
    start = data.find(b"mdat") + 4
    end = data.find(b"moov") - 4
    assert 0 < start < end, "expected the mdat box before the moov box in the bundled clip"
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def truncated_clip(path: Path, keep: float = 0.5) -> Path:
    """The real clip re-encoded with the index first, then cut: the header announces more frames than decode."""
    import av

    with av.open(str(CITY_CLIP)) as src:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])
    full = write_clip(path.with_suffix(".full.mp4"), frames, faststart=True)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def headless_clip(path: Path) -> Path:
    """The real clip cut in half with its index at the end: the container cannot even be opened."""
    data = CITY_CLIP.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def audio_only(path: Path, seconds: float = 0.5) -> Path:
    """A WAV file (a real media file with no video stream)."""
    import av

    rate = 16000
    samples = (np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds))) * 3000).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def text_file(path: Path) -> Path:
    path.write_text("this is a text file, not a video\n", encoding="utf-8")
    return path
