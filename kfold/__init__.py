"""kf: the K-fold stage (data reader, folds, training, inference)."""
from importlib.metadata import PackageNotFoundError, version

try:
    #: the installed distribution's version; pyproject.toml is its one source (also recorded in run.json)
    __version__ = version("kf")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"
