"""The format layer: reference maps and the snapshot-versioned repository that holds them.

Reference maps
    ``refmap.py`` the in-memory model (arrays of chunk references as numpy columns);
    its encodings ``kerchunk_json.py``, ``kerchunk_parquet.py``, as files
    ``refmap_files.py``, as one repository object ``refmap_objects.py``; the Arrow
    buffer helpers every columnar format uses, ``arrow_columns.py``.
The repository
    ``format.py`` ids, canonical JSON, versions, name rules; ``keys.py`` where every
    object lives; ``repository.py`` objects, snapshots, reading, the commit protocol;
    ``refs.py`` branches and tags and the one compare-and-swap that moves them;
    ``tree.py`` the entry trie; ``catalog.py`` records and the query language,
    ``catalog_index.py`` their columnar per-node index, ``node_catalogs.py`` which
    nodes carry one and when it is written; ``checksums.py`` the CRC-32C
    of every chunk; ``object_packs.py`` entry objects packed per leaf at sync
    destinations; ``chunk_replicas.py`` hot chunks copied into a site.
Upkeep
    ``reachability.py`` what branches and tags reach; ``fsck.py``; ``gc.py``;
    ``search.py``.

Nothing here imports zarr, xarray or the reading layers above.
"""
