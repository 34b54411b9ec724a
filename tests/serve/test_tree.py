"""``/api/tree``: an entry's groups and arrays with the shapes, dtypes, chunks and
attributes h5py sees in its source file; keys as on the other endpoints; strict JSON."""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette")

from hyperslab.serve.tree import json_safe
from tests.serve.conftest import ALICE, BOB, ENTRY, OTHER, Shared, auth


def _plain(value: Any) -> Any:
    """An h5py attribute as JSON would hold it."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@pytest.mark.parametrize("entry", [ENTRY, OTHER])
def test_tree_equals_h5py(shared: Shared, client: Any, entry: str) -> None:
    res = client.get(f"/api/tree/{entry}", headers=auth(BOB))
    assert res.status_code == 200, res.text
    doc = res.json()
    assert doc["name"] == entry and doc["snapshot"] == shared.repo.resolve("main")
    assert doc["catalog"]["name"] == entry
    groups, arrays = doc["groups"], doc["arrays"]
    seen = {"groups": 0, "arrays": 0}

    def visit(name: str, obj: Any) -> None:
        attrs = {k: _plain(v) for k, v in obj.attrs.items()}
        if isinstance(obj, h5py.Group):
            assert groups[name]["attrs"] == attrs, name
            seen["groups"] += 1
            return
        a = arrays[name]
        assert a["shape"] == list(obj.shape), name
        if obj.dtype.kind in "iufb":
            assert np.dtype(a["dtype"]) == obj.dtype, name
        if obj.chunks is not None:
            assert a["chunks"] == list(obj.chunks), name
        assert a["attrs"] == attrs, name
        seen["arrays"] += 1

    def walk(group: Any, prefix: str) -> None:  # every name (visititems skips hard links)
        for key in group:
            obj = group[key]
            visit(prefix + key, obj)
            if isinstance(obj, h5py.Group):
                walk(obj, f"{prefix}{key}/")

    with h5py.File(shared.files[entry]) as f:
        walk(f, "")
        root = {k: _plain(v) for k, v in f.attrs.items()}
    assert seen["arrays"] == len(arrays) and seen["groups"] == len(groups) - 1  # and the root
    assert groups[""]["attrs"] == root  # the store's own record of sources is left out
    signal = arrays["entry/data/data"]
    assert signal["dims"][0] == "frame_number" and signal["codecs"]


def test_tree_keys_and_errors(client: Any) -> None:
    assert client.get(f"/api/tree/{ENTRY}").status_code == 401
    assert client.get(f"/api/tree/{ENTRY}", headers=auth("wrong")).status_code == 401
    assert client.get(f"/api/tree/{ENTRY}", headers=auth(ALICE)).status_code == 200
    res = client.get(f"/api/tree/{OTHER}", headers=auth(ALICE))
    assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden"
    res = client.get("/api/tree/run42/nope", headers=auth(BOB))
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    res = client.get("/api/tree/%2e%2e/repo.json", headers=auth(BOB))
    assert res.status_code in (400, 404) and "Traceback" not in res.text


def test_json_is_strict() -> None:
    doc = {"a": [1.5, float("nan")], "b": {"c": float("inf"), "d": -float("inf")}, "e": "x"}
    safe = json_safe(doc)
    assert safe == {"a": [1.5, "NaN"], "b": {"c": "Infinity", "d": "-Infinity"}, "e": "x"}
    json.dumps(safe, allow_nan=False)  # no NaN token a browser's JSON.parse refuses
