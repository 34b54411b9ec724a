"""Reference maps (kerchunk format) and, later, the snapshot-versioned repository."""
