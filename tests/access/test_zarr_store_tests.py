"""zarr's own ``StoreTests``, the read-only parts, run against HyperslabStore.

``StoreTests`` plants keys through a backdoor (``set`` below) that must not use the
store's methods; for a read-only store that is its metadata table, so every read
method under test (``get`` with byte ranges, ``exists``, ``getsize``, ``list*``,
``get_partial_values`` ...) runs through the store's real lookup. Tests that write
through the store are replaced by checks that writing is refused.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from hyperslab.access.store import HyperslabStore
from hyperslab.convert.ingest import ingest
from hyperslab.reading.entry import EntryAddress, EntryView
from hyperslab.reading.reader import EntryReader
from hyperslab.reading.routing import Router
from hyperslab.references.repository import Repository


@pytest.fixture(scope="module")
def entry_view(tmp_path_factory: pytest.TempPathFactory) -> tuple[EntryView, str]:
    d = tmp_path_factory.mktemp("zarr-store-tests")
    with h5py.File(d / "x.h5", "w") as f:
        f.create_dataset("a/b", data=np.arange(20), chunks=(5,))
    spec = str(d / "repo")
    repo = Repository.init(spec)
    ingest(repo, [str(d / "x.h5")], upload_sources=True)
    return EntryView(repo, "x", repo.resolve("main")), spec


_WRITES = (
    "test_clear",
    "test_delete",
    "test_delete_dir",
    "test_set",
    "test_set_if_not_exists",
    "test_set_many",
    "test_set_not_open",
    "test_set_sync",
    "test_delete_sync",
    "test_delete_sync_missing",
    "test_delete_nonexistent_key_does_not_raise",
    "test_serializable_store",  # writes through the store after unpickling
    "test_with_read_only_store",  # needs a writable twin
    "test_store_read_only",  # asserts a store is writable by default
    "test_is_empty",  # empties the store by deleting
    "test_getsize_prefix",  # plants keys with store._set_many
    "test_exists",  # plants keys with store.set
    "test_list_prefix",  # plants keys with store.set
    "test_list_dir",  # plants keys with store.set
    "test_list",  # expects a new store to be empty: ours holds its entry
    "test_list_empty_path",  # idem
)


class TestHyperslabStoreReadOnly(StoreTests[HyperslabStore, cpu.Buffer]):  # type: ignore[misc]
    store_cls = HyperslabStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self, entry_view: tuple[EntryView, str]) -> dict[str, Any]:
        view, spec = entry_view
        address = EntryAddress(spec, "x", view.snapshot, (), False)
        return {"reader": EntryReader(view, Router(view.locations), address)}

    @pytest.fixture
    def open_kwargs(self, store_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**store_kwargs, "read_only": True}

    async def set(self, store: HyperslabStore, key: str, value: Buffer) -> None:
        store._meta[key] = value.to_bytes()  # the backdoor: the store's own key table

    async def get(self, store: HyperslabStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(store._meta[key])

    def test_store_repr(self, store: HyperslabStore) -> None:
        assert repr(store).startswith("HyperslabStore(") and "'x'" in repr(store)

    def test_store_supports_writes(self, store: HyperslabStore) -> None:
        assert not store.supports_writes

    def test_store_supports_listing(self, store: HyperslabStore) -> None:
        assert store.supports_listing

    @pytest.mark.parametrize("read_only", [True, False])
    def test_store_open_read_only(self, open_kwargs: dict[str, Any], read_only: bool) -> None:  # type: ignore[override]
        if not read_only:
            with pytest.raises(Exception, match="read-only"):
                HyperslabStore(**{**open_kwargs, "read_only": False})
            return
        store = HyperslabStore(**open_kwargs)
        assert store.read_only

    async def test_writes_are_refused(self, store: HyperslabStore) -> None:
        buf = self.buffer_cls.from_bytes(b"x")
        for op in (store.set("k", buf), store.set_if_not_exists("k", buf), store.delete("k")):
            with pytest.raises(ValueError, match="read-only"):
                await op
        assert (await store.get("k", default_buffer_prototype())) is None

    async def test_real_chunks_read(self, store: HyperslabStore) -> None:
        keys = [k async for k in store.list_prefix("a/b/")]
        assert sorted(keys) == ["a/b/.zarray", "a/b/.zattrs", "a/b/0", "a/b/1", "a/b/2", "a/b/3"]
        assert await store.exists("a/b/3") and not await store.exists("a/b/4")


def _read_only_skip(self: Any, *args: Any, **kwargs: Any) -> None:
    """Replaced: this StoreTests test writes through the store."""


for _name in _WRITES:
    setattr(
        TestHyperslabStoreReadOnly,
        _name,
        pytest.mark.skip(reason="writes through the store: hyperslab stores are read-only")(
            _read_only_skip
        ),
    )
