"""HDF5/NeXus → kerchunk reference maps (the parsers)."""
