"""Instance segmentation: the classical background-subtraction segmenter (no training)."""
