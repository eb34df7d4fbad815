"""avs_lib: the AVS workbench library (data, composed worlds, encoders, DDESeg, AVSAC, metrics)."""
__version__ = "0.1.0"
