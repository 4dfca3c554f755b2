"""Input and output: video decoding (PyAV), Zarr stores, label files."""
