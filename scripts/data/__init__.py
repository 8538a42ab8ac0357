"""Data: datalists, folds, transforms, synthetic BraTS generator."""
