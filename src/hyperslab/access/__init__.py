"""Read-only Zarr stores over repository snapshots, routing, caching (issue: access/).

Not built yet: until then, read a standalone reference map with fsspec's
``reference://`` filesystem and zarr (see README, "Reading a map without hyperslab").
"""
