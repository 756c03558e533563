"""The `dyntok` command: `inspect`, `calibrate` and `generate` on real videos (decoding, frame encoders,
calibration, plots and the console output each in their own module)."""

from .main import main

__all__ = ["main"]
