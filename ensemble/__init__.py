"""kf ensemble stage: blend runs' OOF probabilities, estimate honestly, write ensemble outputs.

Methods: scikit-learn-like estimators over ``(n_runs, n_images, 18)``
probabilities, registered by name in :data:`ensemble.methods.METHODS` (what
``kf ensemble --method`` offers), and :class:`BiasTuning` on top of any of
them. See docs/ensemble.md.
"""
from kfold.metrics import accuracy, confusion_matrix, f1_per_class, macro_f1, macro_f1_batch
from kfold.runset import RunSet, load_runs

from .bias import BiasTuning, tune_biases
from .caruana import CaruanaSelection
from .evaluate import fold_scores, nested_estimate, nested_fits, score_row
from .methods import METHODS, from_state, make_method, to_state
from .pipeline import run_ensemble
from .stacking import Stacking
from .voting import GeometricMean, SoftVoting
from .weights import OptimizedWeights

__all__ = [
    "BiasTuning", "CaruanaSelection", "GeometricMean", "METHODS", "OptimizedWeights", "RunSet", "SoftVoting",
    "Stacking", "accuracy", "confusion_matrix", "f1_per_class", "fold_scores", "from_state", "load_runs",
    "macro_f1", "macro_f1_batch", "make_method", "nested_estimate", "nested_fits", "run_ensemble", "score_row",
    "to_state", "tune_biases",
]
