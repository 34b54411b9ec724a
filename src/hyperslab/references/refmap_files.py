"""Reference maps as files: kerchunk JSON or an fsspec Parquet directory, written atomically.

What ``hyperslab refs -o OUT`` writes and ``hyperslab verify`` reads; plain fsspec and
kerchunk read them too. (In a repository, a map is one immutable object instead:
:mod:`.refmap_objects`.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from hyperslab.errors import BadInputError, CorruptError, NotFoundError, local_path_error
from hyperslab.references.kerchunk_json import from_kerchunk, write_kerchunk_json
from hyperslab.references.kerchunk_parquet import read_parquet, write_parquet
from hyperslab.references.refmap import PARQUET_THRESHOLD, RefMap

__all__ = ["choose_format", "load_kerchunk_json", "read_refmap", "write_refmap"]


def choose_format(path: str | Path, n_refs: int) -> Literal["json", "parquet"]:
    """``.json`` → JSON, ``.parquet``/``.parq``/directory → Parquet, otherwise by size."""
    p = str(path)
    if p.endswith(".json"):
        return "json"
    if p.endswith((".parquet", ".parq", "/")):
        return "parquet"
    return "parquet" if n_refs >= PARQUET_THRESHOLD else "json"


def write_refmap(refmap: RefMap, path: Path, fmt: Literal["json", "parquet"] | None = None) -> Path:
    """Write atomically: into a temporary sibling, then rename over ``path``.

    A crash leaves either the old map or the new one, never half of one (a
    stale ``.hyperslab-tmp-*`` sibling at worst).
    """
    fmt = fmt or choose_format(path, refmap.n_refs)
    path = path.absolute()
    try:
        return _write_refmap(refmap, path, fmt)
    except OSError as exc:
        raise local_path_error(exc, path, "write the reference map") from exc


def _write_refmap(refmap: RefMap, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.hyperslab-tmp-", dir=path.parent))
    try:
        if fmt == "json":
            target = tmp / "refs.json"
            with open(target, "w", encoding="utf-8") as fh:
                write_kerchunk_json(refmap, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(target, path)
        else:
            target = tmp / "refs.parquet"
            write_parquet(refmap, target)
            if path.exists():
                if not (path / ".zmetadata").exists():
                    raise BadInputError(
                        f"{path} exists and is not a Parquet reference map; not overwriting"
                    )
                old = tmp / "old"
                os.replace(path, old)
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_refmap(path: Path | str) -> RefMap:
    """Read a JSON or Parquet reference map written by hyperslab or kerchunk."""
    p = Path(path)
    if p.is_dir():
        return read_parquet(p)
    return from_kerchunk(load_kerchunk_json(p))


def load_kerchunk_json(path: Path | str) -> dict[str, Any]:
    """A JSON reference map's document, with named errors: a missing file is not found,
    a file that is not a JSON object at all (a NeXus file, notes) is bad input, and one
    that starts as a map but does not parse (truncated) is corrupt."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"reference map {p} does not exist") from exc
    except OSError as exc:
        raise local_path_error(exc, p, "read") from exc
    head = data[:64].lstrip()
    if not head.startswith(b"{"):
        raise BadInputError(
            f"{p} is not a reference map: a JSON map starts with '{{' and a Parquet map is "
            "a folder (write one with `hyperslab refs`)",
            path=str(p),
        )
    try:
        # decode first and drop the bytes, so the file is not held twice while parsing
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        del data
        doc = json.loads(text)
        del text
    except ValueError as exc:
        raise CorruptError(
            f"reference map {p} is not valid JSON (cut short?): {exc}", path=str(p)
        ) from exc
    if not isinstance(doc, dict):
        raise BadInputError(f"{p} is not a reference map (a JSON object)", path=str(p))
    return doc
