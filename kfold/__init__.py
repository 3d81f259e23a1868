"""kf: the K-fold stage (data reader, folds, training, inference)."""
__version__ = "0.1.0"
