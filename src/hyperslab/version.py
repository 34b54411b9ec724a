"""The version of hyperslab (also ``hyperslab.__version__``), written into every
reference map and entry record it makes."""

__version__ = "0.1.0"
