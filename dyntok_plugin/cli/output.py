"""The `--out` folder of a `dyntok` run: created only when a file is written, removed again if the run fails."""

from __future__ import annotations

from pathlib import Path


class OutputFolder:
    """The `--out` folder: checked up front, created only when the first file is written, and removed again
    (with the files this run wrote into it) when the run fails after creating it.

    A folder that existed before the run, and whatever it held, is never deleted.
    """

    def __init__(self, path: str | Path):
        self.root = Path(path)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {str(path)!r} exists and is not a folder; give a folder path")
        self.created: list[Path] = []  # folders this run made, innermost first
        self.written: list[Path] = []

    def file(self, name: str) -> Path:
        """Path of `name` in the folder, creating the folder (and missing parents) on first use."""
        if not self.root.is_dir():
            missing = [folder for folder in (self.root, *self.root.parents) if not folder.exists()]
            self.root.mkdir(parents=True, exist_ok=True)
            self.created = missing
        path = self.root / name
        self.written.append(path)
        return path

    def discard(self) -> None:
        """Undo a failed run: only what it created (its files, then its now-empty folders)."""
        if not self.created:
            return
        for path in self.written:
            path.unlink(missing_ok=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile: keep it
                return
        self.created = []

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
