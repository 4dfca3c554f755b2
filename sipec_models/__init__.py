"""sipec_models: the library behind the SIPEC pipeline.

Everything a Snakemake rule runs lives here, importable from a notebook:
video and Zarr I/O (:mod:`sipec_models.io`), segmentation
(:mod:`sipec_models.segmentation`), tracking (:mod:`sipec_models.tracking`),
the synthetic demo (:mod:`sipec_models.demo`) and the ``sipec`` command
(:mod:`sipec_models.cli`).
"""

__version__ = "0.1.0"
