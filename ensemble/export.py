"""``kf export``: what a teammate needs to predict on kf's folds (``kf import``, :mod:`ensemble.external`, reads what
comes back)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from kfold.folds import FOLDS_JSON, load_folds
from kfold.io import atomic_write, check_writable, read_json, write_csv
from kfold.labels import DEFAULT_AGE_CUTS, N_CLASSES, class_labels, decode
from kfold.runset import load_runs
from kfold.stagefiles import KEY_COLS, write_probs_csv

from .external import recorded_data, reference_test_ids

SPEC = """\
# Predictions for kf: what to send back

Made by `kf export` from `{oof}` on {date}: K={k} folds, {n_images} train images of
{n_people} people, {n_test} test images; folds_fingerprint `{fp}`.

## Files here

- `folds.csv`: `image` (path under the competition data folder), `person`, `fold`
  (0..{k_1}), `label` (0..17), `mask`, `gender`, `age_band`. All images of a person are in
  one fold. For each fold f, train on the rows with `fold != f` and predict the rows with
  `fold == f`: those predictions are the OOF. Use these folds, not your own: `kf import`
  refuses OOF made on other folds (it would leak into stacking and the nested estimate).
- `classes.csv`: class = mask*6 + gender*3 + age_band (mask: wear 0, incorrect 1, not wear 2;
  gender: male 0, female 1; age bands cut at {cuts}).
- `test_ids.csv`: the ImageID of each test image (`eval/images/<ImageID>`), info.csv order.
{run_line}
## Send back

- `oof.csv`: one row per folds.csv image, any order: `image`, `fold`, `prob_0`..`prob_17`
  (`label`, `person` may stay; a label is checked).
- `test.csv`: one row per ImageID, any order: `ImageID`, `prob_0`..`prob_17`, the mean of
  your K fold models; or K files, one per fold (kf averages them).
- Softmax probabilities (rows sum to 1 within 0.001), or logits (import with `--logits`);
  other column names: `--columns "logit_{{}}"` or 18 names in class order.

```python
import pandas as pd
folds, test = pd.read_csv("folds.csv"), pd.read_csv("test_ids.csv")
P = [f"prob_{{c}}" for c in range({n_classes})]
oof, tests = [], []
for f in range(folds.fold.max() + 1):
    tr, va = folds[folds.fold != f], folds[folds.fold == f]
    model = fit(tr.image, tr.label)                      # your training code
    oof.append(va[["image", "fold"]].assign(**dict(zip(P, predict(model, va.image).T))))
    tests.append(predict(model, "eval/images/" + test.ImageID))   # (n, 18) softmax
pd.concat(oof).to_csv("oof.csv", index=False)
test.assign(**dict(zip(P, (sum(tests) / len(tests)).T))).to_csv("test.csv", index=False)
```

Then, on the kf side: `kf import NAME --oof-csv oof.csv --test-csv test.csv --who ... --where ...`
and `kf ensemble --runs <runs>,NAME`.
"""


def export_files(oof_dir: str | Path, out: str | Path, data: str | Path | None = None, run: str | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Write what a teammate needs to predict on kf's folds into folder ``out``.

    Files: ``folds.csv`` (``image, person, fold, label, mask, gender,
    age_band``), ``classes.csv`` (``class, mask, gender, age_band, name``),
    ``test_ids.csv`` (``ImageID`` in info.csv order, when known),
    with ``run`` also ``<run>_oof.csv`` / ``<run>_test.csv`` (the run's
    predictions in plain CSV, ``/`` in the name becoming ``_``), and last
    ``SPEC.md`` (the format and a pandas example). Each file is written
    atomically; ``out`` is created.

    Args:
        oof_dir: the ``--oof`` folder.
        out: destination folder.
        data: the competition folder (for ``eval/info.csv``).
        run: a run or ensemble under ``oof_dir`` whose predictions to include.
        overwrite: replace existing files in ``out`` (refused otherwise, before anything is written).

    Returns:
        The paths written.

    Raises:
        KfError: no valid folds; ``run`` fails :func:`kfold.runset.load_runs`;
            a file exists in ``out`` and ``overwrite`` is False.
    """
    oof_dir, out = Path(oof_dir), Path(out)
    folds = load_folds(oof_dir)
    meta = read_json(oof_dir / FOLDS_JSON)
    ref_ids, ref_src = reference_test_ids(oof_dir, data)
    mask, gender, band = decode(folds["label"].to_numpy(np.int64))
    tables = {"folds.csv": folds[KEY_COLS].assign(mask=mask, gender=gender, age_band=band)}
    cuts = recorded_data(oof_dir).get("age_cuts")
    classes = np.arange(N_CLASSES)
    cm, cg, cb = decode(classes)
    tables["classes.csv"] = pd.DataFrame({"class": classes, "mask": cm, "gender": cg, "age_band": cb,
                                          "name": class_labels(cuts or DEFAULT_AGE_CUTS)})
    if ref_src is not None:
        tables["test_ids.csv"] = pd.DataFrame({"ImageID": ref_ids})
    probs = {}
    if run is not None:
        info = ref_src if ref_src is not None and ref_src.name == "info.csv" else None
        rs = load_runs(oof_dir, [run], info_csv=info)
        stem = run.replace("/", "_")
        probs = {f"{stem}_oof.csv": (rs.keys[KEY_COLS], rs.oof[0]),
                 f"{stem}_test.csv": (pd.DataFrame({"ImageID": rs.test_ids}), rs.test[0])}
    if out.exists():  # before anything is written
        for n in [*tables, *probs, "SPEC.md"]:
            check_writable(out / n, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, table in tables.items():
        write_csv(table, out / n)
        paths.append(out / n)
    for n, (head, p) in probs.items():
        write_probs_csv(out / n, head.reset_index(drop=True), p)
        paths.append(out / n)
    run_line = (f"- `{stem}_oof.csv`, `{stem}_test.csv`: run `{run}`'s predictions in this format.\n" if run else "")
    text = SPEC.format(oof=oof_dir, date=datetime.now(timezone.utc).date().isoformat(), k=meta.get("k"),
                       k_1=int(meta.get("k") or 1) - 1, n_images=len(folds), n_people=folds["person"].nunique(),
                       n_test=len(ref_ids) if ref_src is not None else "(see eval/info.csv)",
                       fp=meta.get("folds_fingerprint"),
                       cuts=f"{cuts[0]:g} and {cuts[1]:g}" if cuts else
                       f"{DEFAULT_AGE_CUTS[0]} and {DEFAULT_AGE_CUTS[1]} (kf's default; no run records its cuts)",
                       run_line=run_line, n_classes=N_CLASSES)
    with atomic_write(out / "SPEC.md", overwrite=overwrite) as fh:
        fh.write(text)
    paths.append(out / "SPEC.md")
    return paths
