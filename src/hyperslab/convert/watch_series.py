"""Detector frame series for ``hyperslab watch``: a folder of frames is one entry.

Detectors that write one file per frame (Pilatus CBF, TIFF) fill a folder per scan.
With series rules, :mod:`.watch` follows each folder that directly holds frame files
as ONE item (its entry is the series, ``build_frames_refmap``), besides the HDF5
files it follows one by one:

* **Its signature** is that of the folder's frames together: their total size,
  the newest mtime and ctime, and their count (in the inode's place). A frame added,
  rewritten or removed changes it, so the settle window starts again, and a series
  committed before and grown since is committed again (a new snapshot of the same
  entry, now with every frame).
* **It is complete** when the rule given says so, checked once it has settled:
  ``frames`` (that many frames have arrived), ``marker`` (a file of that name, such
  as ``scan.done``, is in the folder: the acquisition software writes it last), or
  ``quiet`` (no frame changed for that many seconds; the settle window is the
  minimum). Without a rule, a settled series is complete. Until then the series
  waits (``series incomplete: 3/10 frames``) and nothing of it is read: a frame still
  being written changes the signature, and the settle window holds back a series
  whose last frame is still growing.
* Frames are ingested in name order, the order detectors number them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hyperslab.convert.frames import FRAME_SUFFIXES
from hyperslab.errors import BadInputError

__all__ = ["SeriesRule", "SeriesStat", "frames_in", "is_series", "series_folder", "series_stat"]


class SeriesStat(NamedTuple):
    """A folder of frames seen as one file (the fields a watch signature reads)."""

    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int  # the number of frames


@dataclass(frozen=True)
class SeriesRule:
    """When a folder of frames is a complete scan (see the module doc)."""

    frames: int | None = None
    marker: str | None = None
    quiet: float | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 1:
            raise BadInputError(f"--scan-frames must be at least 1, not {self.frames}")
        if self.marker is not None and (
            not self.marker or "/" in self.marker or self.marker in (".", "..")
        ):
            raise BadInputError(f"--end-marker must be a file name, not {self.marker!r}")
        if self.quiet is not None and not self.quiet >= 0:
            raise BadInputError(f"--scan-quiet must be at least 0 seconds, not {self.quiet}")

    def window(self, settle: float) -> float:
        """How long a series must stay unchanged before it is looked at."""
        return max(settle, self.quiet or 0.0)

    def incomplete(self, folder: Path, frames: list[str]) -> str | None:
        """Why the series in ``folder`` is not a whole scan yet, or None."""
        if self.frames is not None and len(frames) < self.frames:
            return f"series incomplete: {len(frames)}/{self.frames} frames"
        if self.marker is not None and not (folder / self.marker).exists():
            return f"series incomplete: no {self.marker} yet ({len(frames)} frames)"
        return None


def is_series(rel: str) -> bool:
    """Whether a watch item is a folder of frames (their keys end in ``/``)."""
    return rel.endswith("/")


def series_folder(root: Path, rel: str) -> Path:
    """The folder a series item names (``./`` is the watched directory itself)."""
    return root if rel == "./" else root / rel.rstrip("/")


def frames_in(folder: Path) -> list[str]:
    """The frame files directly in ``folder``, in name order (hidden ones left out)."""
    try:
        with os.scandir(folder) as it:
            names = [
                e.path
                for e in it
                if not e.name.startswith(".")
                and e.name.lower().endswith(FRAME_SUFFIXES)
                and e.is_file()
            ]
    except OSError:
        return []
    return sorted(names)


def series_stat(frames: list[str]) -> SeriesStat | None:
    """The signature fields of a series, or None when it holds no frame (any more)."""
    size = mtime = ctime = n = 0
    for path in frames:
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed between the listing and the stat: not counted
        size += st.st_size
        mtime, ctime, n = max(mtime, st.st_mtime_ns), max(ctime, st.st_ctime_ns), n + 1
    return SeriesStat(size, mtime, ctime, n) if n else None
