"""``kf ensemble`` as a library function: load runs, fit methods, score them honestly, write outputs.

Outputs, under ``<oof>/ensemble/`` (see docs/formats.md and docs/ensemble.md):

* ``<name>.json``: method, members, weights, biases, tta per member,
  folds_fingerprint, the fitted state and the scores (JSON, never pickle);
* ``<name>/oof.csv``, ``<name>/test.csv`` (and ``<name>/holdout.csv`` with a
  local holdout): exactly a run's format;
* ``<name>/run.json``: ``kind: "ensemble"``, ``finished: true``,
  ``folds_fingerprint``, so the ensemble loads like a run;
* ``<label>_scores.csv``: the scores table of the invocation.

``<name>`` is the method (``soft``, ``geo``, ``weights``, ``caruana``,
``stacking``) or ``--name``, plus ``+bias`` for the bias-tuned variant.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kfold.io import KfError, check_can_write, stage_lock, write_csv, write_json

from kfold.folds import HOLDOUT_COLS

from .evaluate import fold_scores, nested_fits, score_row
from .methods import METHODS, ensemble_name, make_method, to_state
from kfold.metrics import macro_f1
from .runs import KEY_COLS, RunSet, load_runs, write_probs_csv
from .selection import CONFIDENCE, N_BOOT, Choice, bootstrap_macro_f1, choose

log = logging.getLogger(__name__)

ENSEMBLE_DIR = "ensemble"


@dataclass
class Fitted:
    """One fitted variant of a method.

    Attributes:
        name: output name (``caruana``, ``caruana+bias``).
        estimator: the method fitted on all OOF rows.
        oof_proba: ``(n_images, 18)`` its OOF probabilities (``estimator.oof_proba_``).
        test_proba: ``(n_test, 18)`` its test probabilities.
        per_fold: ``(n_folds,)`` nested macro F1 of each held-out fold.
        nested_proba: ``(n_images, 18)`` nested probabilities, each fold's rows
            predicted by the fit without that fold (pooled, scored once).
        holdout_proba: ``(n_holdout, 18)`` its local-holdout probabilities, or None.
    """

    name: str
    estimator: object
    oof_proba: np.ndarray
    test_proba: np.ndarray
    per_fold: np.ndarray
    nested_proba: np.ndarray | None = None
    holdout_proba: np.ndarray | None = None


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


def fit_method(method: str, runs: RunSet, bias: bool = False, base_name: str | None = None) -> list[Fitted]:
    """Fit ``method`` on all OOF rows and estimate it nested over folds.

    With ``bias`` two variants come back, the plain method and the
    bias-tuned one; both share the same fits (the bias-tuned estimator holds
    the plain one as ``estimator_``), in fold loop and on all rows.

    Args:
        method: a key of :data:`ensemble.methods.METHODS`.
        runs: the loaded runs.
        bias: also return the bias-tuned variant.
        base_name: output name instead of the method's.

    Returns:
        ``[plain]`` or ``[plain, plain+bias]``.
    """
    P, y, folds = runs.oof, runs.y, runs.folds
    est = make_method(method, bias=bias).fit(P, y, folds)
    plain_pooled, bias_pooled = np.zeros(P.shape[1:]), np.zeros(P.shape[1:])
    plain_scores, bias_scores = [], []
    for _, held, fold_est in nested_fits(make_method(method, bias=bias), P, y, folds):
        if bias:
            bias_pooled[held] = fold_est.predict_proba(P[:, held])
            bias_scores.append(macro_f1(y[held], bias_pooled[held].argmax(axis=1)))
            fold_est = fold_est.estimator_
        plain_pooled[held] = fold_est.predict_proba(P[:, held])
        plain_scores.append(macro_f1(y[held], plain_pooled[held].argmax(axis=1)))
    base_name = base_name or method
    plain = est.estimator_ if bias else est

    def holdout(e):
        return None if runs.holdout is None else e.predict_proba(runs.holdout)

    out = [Fitted(ensemble_name(base_name, False), plain, plain.oof_proba_, plain.predict_proba(runs.test),
                  np.array(plain_scores), plain_pooled, holdout(plain))]
    if bias:
        out.append(Fitted(ensemble_name(base_name, True), est, est.oof_proba_, est.predict_proba(runs.test),
                          np.array(bias_scores), bias_pooled, holdout(est)))
    return out


def member_rows(runs: RunSet) -> list[dict]:
    """Score rows of the single runs: OOF macro F1 and per-fold macro F1 (already held-out)."""
    return [score_row(name, "run", runs.oof[m], runs.y, fold_scores(runs.oof[m], runs.y, runs.folds))
            for m, name in enumerate(runs.names)]


def score_table(runs: RunSet, fitted: list[Fitted], select_on: str = "estimate", confidence: float = CONFIDENCE,
                n_boot: int = N_BOOT) -> tuple[pd.DataFrame, Choice]:
    """The scores table of the runs and fitted variants, with spreads, and the choice of ``ensemble/best``.

    Columns beside :func:`ensemble.evaluate.score_row`'s: ``pooled_sd`` and
    ``pooled_p_better`` (person-level bootstrap of ``pooled_macro_f1``, the
    selection estimate: its standard deviation and the share of paired
    resamples in which the option beats the best single run), and with a
    local holdout ``holdout_macro_f1``, ``holdout_sd`` (bootstrap over holdout
    people), ``holdout_p_better``. ``chosen`` marks ``ensemble/best``.

    Args:
        select_on: ``estimate`` (the pooled nested macro F1; the default) or
            ``holdout`` (the holdout macro F1, for teams that want a
            public-leaderboard-like choice; the holdout then no longer is an
            unbiased check of the chosen option).
        confidence: share of paired resamples in which a blend must beat the
            best single run to be chosen (:func:`ensemble.selection.choose`).
        n_boot: bootstrap resamples.

    Raises:
        KfError: ``select_on="holdout"`` without a holdout.
    """
    rows = member_rows(runs) + [score_row(f.name, "ensemble", f.oof_proba, runs.y, f.per_fold, f.nested_proba)
                                for f in fitted]
    table = pd.DataFrame(rows)
    names, kinds = list(table["name"]), list(table["kind"])
    pooled = [runs.oof[m] for m in range(len(runs.names))] + [f.nested_proba for f in fitted]
    boot = bootstrap_macro_f1(runs.y, np.stack([p.argmax(axis=1) for p in pooled]), runs.keys["person"].to_numpy(), n_boot)
    by_estimate = choose(names, kinds, table["pooled_macro_f1"].to_numpy(), boot, confidence)
    table.insert(5, "pooled_sd", boot.std(axis=1, ddof=1))
    table.insert(6, "pooled_p_better", by_estimate.p_better)
    choice = by_estimate
    if runs.holdout is not None:
        hy = runs.holdout_y
        hold = [runs.holdout[m] for m in range(len(runs.names))] + [f.holdout_proba for f in fitted]
        hpred = np.stack([p.argmax(axis=1) for p in hold])
        hboot = bootstrap_macro_f1(hy, hpred, runs.holdout_keys["person"].to_numpy(), n_boot)
        table.insert(7, "holdout_macro_f1", [macro_f1(hy, p) for p in hpred])
        table.insert(8, "holdout_sd", hboot.std(axis=1, ddof=1))
        by_holdout = choose(names, kinds, table["holdout_macro_f1"].to_numpy(), hboot, confidence, "holdout macro F1",
                            on="holdout")
        table.insert(9, "holdout_p_better", by_holdout.p_better)
        if select_on == "holdout":
            choice = by_holdout
    elif select_on == "holdout":
        raise KfError("--select-on holdout: these runs have no local holdout (make folds with --holdout 0.2 and retrain)")
    table["chosen"] = [i == choice.index for i in range(len(table))]
    return table, choice


def ensemble_doc(fit: Fitted, runs: RunSet, rows: list[dict]) -> dict:
    """The content of ``<oof>/ensemble/<name>.json`` for ``fit`` (docs/ensemble.md lists the fields)."""
    state = to_state(fit.estimator)
    own = next(r for r in rows if r["name"] == fit.name)
    return {"name": fit.name, **{k: state[k] for k in ("method", "bias")}, "members": runs.names,
            "weights": state["weights"], "biases": state["biases"], "tta": dict(zip(runs.names, runs.tta)),
            "folds_fingerprint": runs.folds_fingerprint, "k": runs.k,
            "oof_macro_f1": own["oof_macro_f1"], "nested_macro_f1": own["nested_macro_f1"],
            "params": state["params"], "bias_params": state["bias_params"], "fitted": state["fitted"],
            "scores": [r for r in rows if r["kind"] == "run"] + [own], "versions": _versions()}


def write_outputs(fit: Fitted, runs: RunSet, oof_dir: str | Path, rows: list[dict]) -> list[Path]:
    """Write ``<oof>/ensemble/<name>.json`` and ``<name>/{oof.csv,test.csv,run.json}`` atomically.

    ``run.json`` is written last, so a folder interrupted mid-write is not a
    finished run.

    Returns:
        The paths written.
    """
    ens_dir = Path(oof_dir) / ENSEMBLE_DIR
    out_dir = ens_dir / fit.name
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = ensemble_doc(fit, runs, rows)
    own = next(r for r in rows if r["name"] == fit.name)
    run_json = {"name": f"{ENSEMBLE_DIR}/{fit.name}", "kind": "ensemble", "method": doc["method"], "bias": doc["bias"],
                "members": runs.names, "ensemble_json": f"../{fit.name}.json", "folds_fingerprint": runs.folds_fingerprint,
                "k": runs.k, "tta": doc["tta"], "oof_macro_f1": doc["oof_macro_f1"],
                "nested_macro_f1": doc["nested_macro_f1"], "finished": True}
    paths = [out_dir / "oof.csv", out_dir / "test.csv", ens_dir / f"{fit.name}.json", out_dir / "run.json"]
    paths[3].unlink(missing_ok=True)  # while rewriting, the folder is not a finished run
    write_probs_csv(paths[0], runs.keys[KEY_COLS].reset_index(drop=True), fit.oof_proba)
    write_probs_csv(paths[1], pd.DataFrame({"ImageID": runs.test_ids}), fit.test_proba)
    paths[2:2] = write_holdout(out_dir, runs, fit.holdout_proba)
    if "holdout_macro_f1" in own:
        run_json["holdout_macro_f1"] = own["holdout_macro_f1"]
    write_json(doc, paths[-2])
    write_json(run_json, paths[-1])
    return paths


def write_holdout(out_dir: Path, runs: RunSet, proba: np.ndarray | None) -> list[Path]:
    """Write ``out_dir/holdout.csv`` (``image, person, label, prob_0..17``) when there is a holdout; else remove a stale one."""
    path = out_dir / "holdout.csv"
    if proba is None or runs.holdout_keys is None:
        path.unlink(missing_ok=True)
        return []
    write_probs_csv(path, runs.holdout_keys[HOLDOUT_COLS].reset_index(drop=True), proba)
    return [path]


def _versions() -> dict:
    import scipy
    import sklearn

    import kfold

    return {"kf": kfold.__version__, "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def check_overwrites(oof_dir: str | Path, names: list[str], members: list[str], overwrite: bool = False) -> list[str]:
    """Ensembles among ``names`` that were written with other members (see :func:`run_ensemble`'s ``overwrite``).

    Returns:
        One ``"<name> of <old members>"`` per ensemble this call will replace (only with ``overwrite``).

    Raises:
        KfError: without ``overwrite``, ``<oof>/ensemble/<name>.json`` exists for one of ``names`` and lists other members.
    """
    from kfold.io import read_json

    replaced = []
    for n in names:
        path = Path(oof_dir) / ENSEMBLE_DIR / f"{n}.json"
        if not path.is_file():
            continue
        try:
            old = list(read_json(path).get("members") or [])
        except KfError:
            old = None
        if old != list(members):
            had = ", ".join(old) if old is not None else "unreadable members"
            if not overwrite:
                raise KfError(f"{path}: already holds {n} of {had}; this call blends {', '.join(members)}: pass --name "
                              "to keep both, or --overwrite to replace it")
            replaced.append(f"{n} of {had}")
    return replaced


def run_ensemble(oof_dir: str | Path, method: str = "caruana", runs: list[str] | None = None, bias: bool = False,
                 name: str | None = None, info_csv: str | Path | None = None, overwrite: bool = False,
                 select_on: str = "estimate", confidence: float = CONFIDENCE) -> EnsembleReport:
    """Everything ``kf ensemble`` does: load, fit, estimate nested, write outputs and the scores table.

    Args:
        oof_dir: the ``--oof`` folder.
        method: ``soft``, ``geo``, ``weights``, ``caruana``, ``stacking`` or ``all``.
        runs: run names; None for every finished run under ``oof_dir``.
        bias: also fit each method with per-class bias tuning (``<name>+bias``);
            both variants are written and scored.
        name: output name instead of the method's (one method only).
        info_csv: optional ``eval/info.csv`` the ``test.csv`` ImageIDs must match.
        overwrite: replace an ensemble of the same name written with other
            members; without it that is an error, raised before anything is
            written (the same members are refitted and replaced silently).
        select_on, confidence: how ``ensemble/best`` is chosen (see :func:`score_table`).

    The checks of ``ensemble/`` and ``best/`` and the writes into them hold
    :func:`kfold.io.stage_lock` on ``<oof>/ensemble``: concurrent calls on one
    ``--oof`` behave as if run one after the other (the later one waits, then
    compares with what the first wrote).

    Returns:
        An :class:`EnsembleReport`; ``table`` has one row per member and per
        fitted variant (see :func:`ensemble.evaluate.score_row`).

    Raises:
        KfError: bad input (see :func:`ensemble.runs.load_runs`), an
            ensemble among the runs (its OOF probabilities were fitted on all
            OOF rows, so blending it again would score an in-sample fit as
            held-out), unknown method, ``name`` with ``method="all"``, a bad name, or
            ``stacking`` with fewer than 3 folds (``all`` then skips it
            with a warning).
    """
    if method != "all" and method not in METHODS:
        raise KfError(f"--method {method!r}: unknown, expected one of {', '.join(METHODS)} or all")
    if select_on not in ("estimate", "holdout"):
        raise KfError(f"--select-on {select_on!r}: expected estimate or holdout")
    if not 0.5 <= confidence < 1:
        raise KfError(f"--confidence {confidence!r}: expected a share between 0.5 and 1 (e.g. 0.9)")
    if name is not None and method == "all":
        raise KfError("--name applies to one method; with --method all each method is written under its own name")
    if name is not None:
        ensemble_name(name, bias)  # validate before the work
    rs = load_runs(oof_dir, runs, info_csv=info_csv)
    for n, kind, mem in zip(rs.names, rs.kinds, rs.members):
        if kind == "ensemble":
            raise KfError(f"--runs: {n} is an ensemble (of {', '.join(mem) or 'unknown members'}); its OOF probabilities "
                          "were fitted on every OOF row, so blending it again would score an in-sample fit as held-out: "
                          f"blend its members instead (--runs {','.join(mem) or 'RUN,RUN'})")
    if rs.folds.min() == rs.folds.max():
        raise KfError(f"{Path(oof_dir) / 'folds.json'}: a single fold; the nested estimate needs K >= 2")
    methods = list(METHODS) if method == "all" else [method]
    n_folds = len(np.unique(rs.folds))
    if "stacking" in methods and n_folds < 3:  # its nested fits cross-fit inside K-1 folds
        if method == "stacking":
            raise KfError(f"{Path(oof_dir) / 'folds.json'}: --method stacking needs K >= 3 folds (its nested estimate "
                          f"cross-fits inside K-1 folds), these runs have K={n_folds}")
        methods.remove("stacking")
        log.warning("stacking skipped: it needs K >= 3 folds, these runs have K=%d", n_folds)
    targets = [ensemble_name(name or m, b) for m in methods for b in ([False, True] if bias else [False])]
    check_overwrites(oof_dir, targets, rs.names, overwrite)  # before the work
    fitted: list[Fitted] = []
    for m in methods:
        fitted += fit_method(m, rs, bias=bias, base_name=name)
    table, choice = score_table(rs, fitted, select_on, confidence)
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


BEST = "best"


def previous_best(oof_dir: str | Path, folds_fingerprint: str) -> dict | None:
    """The ``run.json`` of ``<oof>/ensemble/best/`` when it is comparable with a new call, else None.

    Comparable means finished, made on the same folds and labels (same
    ``folds_fingerprint``: the pooled nested estimate is then computed on the
    same held-out rows, whatever the members) and chosen by the same rule
    (``select_on``; an older ``best`` without it is replaced).
    """
    from kfold.io import read_json

    path = Path(oof_dir) / ENSEMBLE_DIR / BEST / "run.json"
    if not path.is_file():
        return None
    try:
        meta = read_json(path)
        float(meta["selection_score"])
    except (KfError, KeyError, TypeError, ValueError):
        log.warning("%s: unreadable or from an older kf, replaced", path)
        return None
    if meta.get("finished") is not True or meta.get("folds_fingerprint") != folds_fingerprint:
        return None
    return meta


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
    paths = [out / "oof.csv", out / "test.csv", out / "run.json"]
    paths[2].unlink(missing_ok=True)
    (out / "ensemble.json").unlink(missing_ok=True)
    write_probs_csv(paths[0], runs.keys[KEY_COLS].reset_index(drop=True), oof_p)
    write_probs_csv(paths[1], pd.DataFrame({"ImageID": runs.test_ids}), test_p)
    paths[2:2] = write_holdout(out, runs, hold_p)
    if row["kind"] != "run":
        write_json(ensemble_doc(f, runs, rows), out / "ensemble.json")
        paths.insert(-1, out / "ensemble.json")
    meta = {"name": f"{ENSEMBLE_DIR}/{BEST}", "kind": "ensemble", "chosen": chosen, "chosen_kind": row["kind"],
            "members": runs.names, "folds_fingerprint": runs.folds_fingerprint, "k": runs.k,
            "tta": dict(zip(runs.names, runs.tta)), "oof_macro_f1": float(row["oof_macro_f1"]),
            "nested_macro_f1": float(row["nested_macro_f1"]), "pooled_macro_f1": float(row["pooled_macro_f1"]),
            "pooled_sd": float(row["pooled_sd"]), "select_on": select_on, "selection_score": score,
            "reason": choice.reason, "finished": True}
    if "holdout_macro_f1" in row:
        meta.update(holdout_macro_f1=float(row["holdout_macro_f1"]), holdout_sd=float(row["holdout_sd"]))
    write_json(meta, paths[-1])
    return paths, meta


def format_table(table: pd.DataFrame) -> str:
    """Two text blocks: macro F1 (in-sample, nested, pooled with spread, holdout) and accuracy; then per-class F1.

    The per-fold columns stay in ``<label>_scores.csv`` only.
    """
    summary = table[[c for c in table.columns if not c.startswith(("f1_", "fold"))]].set_index("name")
    per_class = table.set_index("name")[[c for c in table.columns if c.startswith("f1_")]]
    per_class.columns = [c[3:] for c in per_class.columns]
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        return (summary.to_string(float_format=lambda v: f"{v:.4f}") + "\n\nper-class F1 (class = mask*6 + gender*3 + age band):\n"
                + per_class.to_string(float_format=lambda v: f"{v:.3f}"))


__all__ = ["EnsembleReport", "Fitted", "check_overwrites", "ensemble_doc", "fit_method", "format_table", "member_rows",
           "previous_best", "run_ensemble", "write_best", "write_outputs"]
