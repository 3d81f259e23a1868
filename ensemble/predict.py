"""Apply a run or an ensemble to a folder of images (``kf predict``).

A run is applied by ``kfold.inference.predict_images`` (imported lazily: it
needs torch). An ensemble is applied by predicting with each member (itself
a run or an ensemble) and combining the members' probabilities with the
method rebuilt from ``oof/ensemble/<name>.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kfold.io import KfError, read_json
from kfold.runrecord import read_run_json
from kfold.stagefiles import write_probs_csv

from .external import refuse_external
from .methods import from_state


def ensemble_json_path(run_dir: Path) -> Path:
    """``oof/ensemble/<name>.json`` of the ensemble folder ``oof/ensemble/<name>``."""
    return run_dir.parent / f"{run_dir.name}.json"


def predict_dir(run_dir: str | Path, images_dir: str | Path, tta: str | None = None,
                batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """Probabilities of a run or ensemble for every image in ``images_dir``.

    Args:
        run_dir: ``oof/<run>`` or ``oof/ensemble/<name>`` (a folder with ``run.json``).
        images_dir: folder of images.
        tta: ``none``, ``hflip``, ``flip`` or ``d4`` for every run; None uses
            each run's own ``tta`` from its ``run.json``.
        batch_size: inputs per forward pass, TTA views included.

    Returns:
        ``(image_ids, probs)``: ImageIDs (file names) and ``(n_images, 18)``
        float64 probabilities, rows summing to 1.

    Raises:
        KfError: missing files, members predicting different images, a
            member list that does not match the ensemble's weights, or an
            imported run (``kind: external``, no model) in ``run_dir``.
    """
    run_dir = Path(run_dir)
    refuse_external(run_dir, "kf predict", "predict these images with the tool that made it and kf import the result, "
                    "or submit the eval set from test.csv (kf submit --from)")
    rj = read_run_json(run_dir)
    if rj.kind != "ensemble":
        from kfold.inference import predict_images

        ids, probs = predict_images(run_dir, images_dir, tta=tta or rj.get("tta") or "none", batch_size=batch_size)
        return list(ids), np.asarray(probs, dtype=np.float64)
    oof_dir = run_dir.parent.parent  # members are named relative to the oof folder
    if rj.get("chosen") and rj.get("chosen_kind") == "run":  # ensemble/best holding a single run
        return predict_dir(oof_dir / rj["chosen"], images_dir, tta=tta, batch_size=batch_size)
    # ensemble/best keeps its own copy of the chosen blend's state: ensemble/<name> may have been rewritten since
    doc = read_json(run_dir / "ensemble.json" if rj.get("chosen") else ensemble_json_path(run_dir))
    est = from_state(doc)
    ids0, probs = None, []
    for member in doc["members"]:
        ids, p = predict_dir(oof_dir / member, images_dir, tta=tta or _member_tta(doc, member), batch_size=batch_size)
        if ids0 is None:
            ids0 = ids
        elif list(ids) != list(ids0):
            raise KfError(f"{oof_dir / member}: predicted other images than {oof_dir / doc['members'][0]}")
        probs.append(p)
    return ids0, est.predict_proba(np.stack(probs))


def _member_tta(doc: dict, member: str) -> str | None:
    t = (doc.get("tta") or {}).get(member)
    return t if isinstance(t, str) else None  # an ensemble member: its members' own TTA


def write_predictions(ids: list[str], probs: np.ndarray, out: str | Path) -> None:
    """Write ``ImageID, prob_0..prob_17`` (a run's test.csv format) atomically to ``out``."""
    write_probs_csv(out, pd.DataFrame({"ImageID": list(ids)}), probs)
