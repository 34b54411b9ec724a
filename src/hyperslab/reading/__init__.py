"""The reading layer: chunks of repository entries, routed, checked, cached and decoded.

Zarr-free, so the faces (``access/``: the Zarr store, ``open_array``, xarray) and
the sync engine's hot-chunk copy read through the same code:

* ``entry.py``: one pinned entry, its refmap, chunk tables and where each source
  can be read (``EntryView``); ``reader.py``: an entry opened for reading
  (``open_reader``: sites, caches, decoders, statistics);
* ``routing.py``: per-chunk routing across sites with fallback, coalesced ranges,
  CRC-32C checks; ``chunk_tables.py``: a refmap's chunk references, eager or lazy;
* ``decode.py``: store-side decoding and the decoded-chunk memory cache;
* ``chunk_cache.py``: the bounded local disk cache; ``access_stats.py``: per-chunk
  read counts (hot chunks); ``local_db.py``: the SQLite set-up both share.
"""
