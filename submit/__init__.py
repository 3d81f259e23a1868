"""The ``submit`` stage: a run's or ensemble's ``test.csv`` -> the competition CSV ``ImageID,ans``."""
from .submission import (
    PROB_COLUMNS,
    list_sources,
    make_submission,
    read_answers,
    read_info_ids,
    read_test_probs,
    resolve_source,
    validate_submission,
    validate_test_probs,
    write_submission,
)
from .summary import class_distribution, compare_answers, score, train_labels

__all__ = [
    "PROB_COLUMNS", "list_sources", "make_submission", "read_answers", "read_info_ids", "read_test_probs",
    "resolve_source", "validate_submission", "validate_test_probs", "write_submission",
    "class_distribution", "compare_answers", "score", "train_labels",
]
