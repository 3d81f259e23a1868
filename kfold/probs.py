"""Probability tables: key columns followed by the ``prob_*`` columns (the body of oof.csv, test.csv, holdout.csv)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .stagefiles import PROB_COLS


def probs_frame(front: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """``front`` (its index dropped) with ``probs`` ``(len(front), n_classes)`` appended as the ``prob_*`` columns."""
    return pd.concat([front.reset_index(drop=True), pd.DataFrame(probs, columns=PROB_COLS)], axis=1)
