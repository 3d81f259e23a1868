"""``kf ensemble`` as a library function: load runs, fit methods, score them honestly, write outputs.

Outputs, under ``<oof>/ensemble/`` (see docs/formats.md and docs/ensemble.md):

* ``<name>.json``: method, members, weights, biases, tta per member,
  folds_fingerprint, the fitted state and the scores (JSON, never pickle);
* ``<name>/oof.csv``, ``<name>/test.csv`` (and ``<name>/holdout.csv`` with a
  local holdout): exactly a run's format;
* ``<name>/run.json``: ``kind: "ensemble"``, ``finished: true``,
  ``folds_fingerprint``, so the ensemble loads like a run;
* ``<label>_scores.csv``: the scores table of the invocation.

``<name>`` is the method (a key of :data:`ensemble.methods.METHODS`:
``soft``, ``caruana``, ...) or ``--name``, plus ``+bias`` for the bias-tuned variant.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kfold.io import KfError, ParamError, check_can_write, write_csv, write_json
from kfold.locks import stage_lock
from kfold.runrecord import ENSEMBLE_DIR, RunRecord, read_run_json, run_json_path, write_run_json
from kfold.runset import RunSet, load_runs
from kfold.stagefiles import KEY_COLS, write_probs_csv

from .base import Scorer
from .methods import METHODS, check_method, ensemble_name
from .outputs import check_overwrites, ensemble_doc, write_holdout, write_outputs
from .scores import Fitted, fit_method, score_table
from .selection import CONFIDENCE, Choice

log = logging.getLogger(__name__)

#: what chooses ``ensemble/best``
SELECT_ON = ("estimate", "holdout")
BEST = "best"


@dataclass
class EnsembleReport:
    """What :func:`run_ensemble` did: the runs, the fitted variants, the table, the files written, the
    ensembles of other members it replaced (``--overwrite``), and ``ensemble/best``'s ``run.json`` after
    the call with whether this call wrote it or kept an earlier one."""

    runs: RunSet
    fitted: list[Fitted]
    table: pd.DataFrame
    choice: Choice | None = None
    written: list[Path] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_kept: bool = False


def run_ensemble(oof_dir: str | Path, method: str = "caruana", runs: list[str] | None = None, bias: bool = False,
                 name: str | None = None, info_csv: str | Path | None = None, overwrite: bool = False,
                 select_on: str = "estimate", confidence: float = CONFIDENCE,
                 scorer: Scorer | None = None) -> EnsembleReport:
    """Everything ``kf ensemble`` does: load, fit, estimate nested, write outputs and the scores table.

    Args:
        oof_dir: the ``--oof`` folder.
        method: a key of :data:`ensemble.methods.METHODS` (``soft``, ``caruana``, ...) or ``all``.
        runs: run names; None for every finished run under ``oof_dir``.
        bias: also fit each method with per-class bias tuning (``<name>+bias``);
            both variants are written and scored.
        name: output name instead of the method's (one method only).
        info_csv: optional ``eval/info.csv`` the ``test.csv`` ImageIDs must match.
        overwrite: replace an ensemble of the same name written with other
            members; without it that is an error, raised before anything is
            written (the same members are refitted and replaced silently).
        select_on, confidence: how ``ensemble/best`` is chosen (see :func:`ensemble.scores.score_table`).
        scorer: ``(y_true, y_pred) -> float``, higher is better, that Caruana,
            bias tuning, the nested estimate and the choice of ``best`` use;
            None for :func:`kfold.metrics.macro_f1` (the competition metric).

    The checks of ``ensemble/`` and ``best/`` and the writes into them hold
    :func:`kfold.locks.stage_lock` on ``<oof>/ensemble``: concurrent calls on one
    ``--oof`` behave as if run one after the other (the later one waits, then
    compares with what the first wrote).

    Returns:
        An :class:`EnsembleReport`; ``table`` has one row per member and per
        fitted variant (see :func:`ensemble.evaluate.score_row`).

    Raises:
        KfError: bad input (see :func:`kfold.runset.load_runs`), an
            ensemble among the runs (its OOF probabilities were fitted on all
            OOF rows, so blending it again would score an in-sample fit as
            held-out), unknown method, ``name`` with ``method="all"``, a bad name, or
            ``stacking`` with fewer than 3 folds (``all`` then skips it
            with a warning).
    """
    check_method(method, allow_all=True)
    if select_on not in SELECT_ON:
        raise ParamError(f"{{select_on}} {select_on!r}: expected estimate or holdout", "select_on")
    if not 0.5 <= confidence < 1:
        raise ParamError(f"{{confidence}} {confidence!r}: expected a share between 0.5 and 1 (e.g. 0.9)", "confidence")
    if name is not None and method == "all":
        raise ParamError("{name} applies to one method; with {method} all each method is written under its own name",
                         "name", "method")
    if name is not None:
        ensemble_name(name, bias)  # validate before the work
    rs = load_runs(oof_dir, runs, info_csv=info_csv)
    for n, kind, mem in zip(rs.names, rs.kinds, rs.members):
        if kind == "ensemble":
            raise ParamError(f"{{runs}}: {n} is an ensemble (of {', '.join(mem) or 'unknown members'}); its OOF "
                             "probabilities were fitted on every OOF row, so blending it again would score an in-sample "
                             f"fit as held-out: blend its members instead ({{runs}} {','.join(mem) or 'RUN,RUN'})", "runs")
    if rs.folds.min() == rs.folds.max():
        raise KfError(f"{Path(oof_dir) / 'folds.json'}: a single fold; the nested estimate needs K >= 2")
    methods = list(METHODS) if method == "all" else [method]
    n_folds = len(np.unique(rs.folds))
    if "stacking" in methods and n_folds < 3:  # its nested fits cross-fit inside K-1 folds
        if method == "stacking":
            raise ParamError(f"{Path(oof_dir) / 'folds.json'}: {{method}} stacking needs K >= 3 folds (its nested "
                             f"estimate cross-fits inside K-1 folds), these runs have K={n_folds}", "method")
        methods.remove("stacking")
        log.warning("stacking skipped: it needs K >= 3 folds, these runs have K=%d", n_folds)
    targets = [ensemble_name(name or m, b) for m in methods for b in ([False, True] if bias else [False])]
    check_overwrites(oof_dir, targets, rs.names, overwrite)  # before the work
    fitted: list[Fitted] = []
    for m in methods:
        fitted += fit_method(m, rs, bias=bias, base_name=name, scorer=scorer)
    table, choice = score_table(rs, fitted, select_on, confidence, scorer=scorer)
    rows = table.to_dict("records")
    with stage_lock(Path(oof_dir) / ENSEMBLE_DIR, log.warning):  # checks and writes of ensemble/ and best/ as one step
        replaced = check_overwrites(oof_dir, targets, rs.names, overwrite)  # again: another call may have written since
        check_can_write(Path(oof_dir) / ENSEMBLE_DIR, folder=True)  # before the first old file is replaced
        written: list[Path] = []
        for f in fitted:
            written += write_outputs(f, rs, oof_dir, rows)
        label = ensemble_name(name or method, bias)
        scores_csv = Path(oof_dir) / ENSEMBLE_DIR / f"{label}_scores.csv"
        write_csv(table, scores_csv, float_format="%.6f")
        written.append(scores_csv)
        best_paths, best = write_best(rs, fitted, rows, oof_dir, choice)
        written += best_paths
    return EnsembleReport(runs=rs, fitted=fitted, table=table, choice=choice, written=written, replaced=replaced,
                          best=best, best_kept=not best_paths)


def previous_best(oof_dir: str | Path, folds_fingerprint: str) -> dict | None:
    """The ``run.json`` of ``<oof>/ensemble/best/`` when it is comparable with a new call, else None.

    Comparable means finished, made on the same folds and labels (same
    ``folds_fingerprint``: the pooled nested estimate is then computed on the
    same held-out rows, whatever the members) and chosen by the same rule
    (``select_on``; an older ``best`` without it is replaced).
    """
    folder = Path(oof_dir) / ENSEMBLE_DIR / BEST
    path = run_json_path(folder)
    if not path.is_file():
        return None
    try:
        meta = read_run_json(folder)
        float(meta["selection_score"])
    except (KfError, KeyError, TypeError, ValueError):
        log.warning("%s: unreadable or from an older kf, replaced", path)
        return None
    if not meta.finished or meta.folds_fingerprint != folds_fingerprint:
        return None
    return meta.to_dict()


def write_best(runs: RunSet, fitted: list[Fitted], rows: list[dict], oof_dir: str | Path,
               choice: Choice) -> tuple[list[Path], dict]:
    """Write ``<oof>/ensemble/best/``: the option :func:`score_table` chose, unless an earlier choice scores higher.

    The in-sample OOF score rewards blends that overfit the OOF rows (bias
    tuning above all), so the choice goes by the pooled nested estimate and
    a blend must beat the best single run credibly (``choice.reason`` says
    why). An existing ``best`` made on the same folds by the same rule
    (:func:`previous_best`) whose selection score is higher than this call's
    choice is kept, so a later call on fewer or weaker runs does not replace
    it; delete the folder to start over. The folder has a run's format
    (``oof.csv``, ``test.csv``, ``holdout.csv`` with a local holdout,
    ``run.json`` with ``chosen``, ``chosen_kind``, ``members``, ``reason``,
    ``selection_score``), so ``kf submit --from ensemble/best`` takes it; a
    chosen blend's fitted state is copied into ``ensemble.json`` (as
    ``<name>.json``), so ``kf predict ensemble/best`` applies it even after a
    later call rewrites ``ensemble/<name>``.

    Args:
        rows: the score rows of the call (:func:`score_table` as records).
        choice: the choice of :func:`score_table`.

    Returns:
        ``(paths written, the run.json of best)``; no paths when the previous ``best`` was kept.
    """
    row = rows[choice.index]
    select_on = choice.on
    score = float(row["holdout_macro_f1"] if select_on == "holdout" else row["pooled_macro_f1"])
    prev = previous_best(oof_dir, runs.folds_fingerprint)
    if prev is not None and prev.get("select_on", "estimate") == select_on and float(prev["selection_score"]) > score:
        return [], prev
    chosen = str(row["name"])
    if row["kind"] == "run":
        m = runs.names.index(chosen)
        oof_p, test_p = runs.oof[m], runs.test[m]
        hold_p = None if runs.holdout is None else runs.holdout[m]
    else:
        f = next(f for f in fitted if f.name == chosen)
        oof_p, test_p, hold_p = f.oof_proba, f.test_proba, f.holdout_proba
    out = Path(oof_dir) / ENSEMBLE_DIR / BEST
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "oof.csv", out / "test.csv", run_json_path(out)]
    paths[2].unlink(missing_ok=True)
    (out / "ensemble.json").unlink(missing_ok=True)
    write_probs_csv(paths[0], runs.keys[KEY_COLS].reset_index(drop=True), oof_p)
    write_probs_csv(paths[1], pd.DataFrame({"ImageID": runs.test_ids}), test_p)
    paths[2:2] = write_holdout(out, runs, hold_p)
    if row["kind"] != "run":
        write_json(ensemble_doc(f, runs, rows), out / "ensemble.json")
        paths.insert(-1, out / "ensemble.json")
    hold = "holdout_macro_f1" in row
    meta = RunRecord.best(f"{ENSEMBLE_DIR}/{BEST}", chosen, row["kind"], runs.names, runs.folds_fingerprint, runs.k,
                          dict(zip(runs.names, runs.tta)), float(row["oof_macro_f1"]), float(row["nested_macro_f1"]),
                          float(row["pooled_macro_f1"]), float(row["pooled_sd"]), select_on, score, choice.reason,
                          float(row["holdout_macro_f1"]) if hold else None, float(row["holdout_sd"]) if hold else None)
    write_run_json(meta, out)
    return paths, meta.to_dict()


__all__ = ["BEST", "EnsembleReport", "SELECT_ON", "previous_best", "run_ensemble", "write_best"]
