"""Tests of the ensemble stage on tiny synthetic runs (noisy softmax of the labels)."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.metrics import f1_score

from ensemble import (
    BiasTuning,
    CaruanaSelection,
    GeometricMean,
    OptimizedWeights,
    SoftVoting,
    Stacking,
    from_state,
    load_runs,
    macro_f1,
    macro_f1_batch,
    make_method,
    nested_estimate,
    nested_fits,
    to_state,
    tune_biases,
)
from ensemble.base import Ensembler, log_proba
from ensemble.bias import class_bias_scores
from ensemble.methods import METHODS
from ensemble.synth import synthetic_labels, synthetic_probs, write_synthetic_runs
from kf.cli import main
from kfold.io import KfError
from kfold.stagefiles import PROB_COLS

ALL_METHODS = list(METHODS)  # every registered method runs the round-trip, --bias and --method all tests


@pytest.fixture
def oof(tmp_path):
    """oof/ with folds.csv, folds.json and runs run0, run1, run2 (40 people x 7 images, K=5, 21 test images)."""
    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=40, n_runs=3, k=5, n_test=21, seed=3)
    return d


@pytest.fixture(scope="module")
def data():
    """``(P, y, folds)``: 3 runs x 350 images x 18 probabilities, labels and 5 folds."""
    df = synthetic_labels(50, k=5, seed=0)
    y, folds = df["label"].to_numpy(), df["fold"].to_numpy()
    return synthetic_probs(y, 3, [1.0, 1.8, 2.5], seed=1), y, folds


# --- macro F1 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn_including_absent_classes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    y = rng.integers(0, 12, n)  # classes 12..17 never true
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 18, n))
    want = f1_score(y, pred, average="macro", labels=range(18), zero_division=0)
    assert macro_f1(y, pred) == pytest.approx(want, abs=1e-12)


def test_macro_f1_batch_equals_one_call_per_row():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 18, 300)
    preds = rng.integers(0, 18, (7, 300))
    preds[2] = y
    got = macro_f1_batch(y, preds)
    assert got == pytest.approx([macro_f1(y, p) for p in preds], abs=1e-12)
    assert got[2] == pytest.approx(len(np.unique(y)) / 18)


# --- methods ------------------------------------------------------------------------------------

@pytest.mark.parametrize("est", [OptimizedWeights(), CaruanaSelection(25)], ids=["weights", "caruana"])
def test_fitted_weights_are_nonnegative_and_sum_to_one(est, data):
    P, y, folds = data
    w = clone(est).fit(P, y, folds).weights_
    assert w.shape == (3,)
    assert (w >= 0).all()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_weights_put_most_weight_on_the_informative_run_and_beat_equal_weights(data):
    P, y, _ = data
    noise = synthetic_probs(y, 2, 0.0, seed=9)  # two runs that know nothing
    Q = np.concatenate([P[2:3], noise])
    est = OptimizedWeights().fit(Q, y)
    uniform = -np.log(Q.mean(0)[np.arange(len(y)), y]).mean()
    assert est.weights_[0] > 0.8
    assert est.loss_ < uniform


def test_caruana_keeps_the_best_iteration(data):
    P, y, _ = data
    est = CaruanaSelection(30).fit(P, y)
    assert len(est.trajectory_) == 30
    assert est.best_iteration_ == int(np.argmax(est.trajectory_)) + 1
    assert macro_f1(y, est.oof_proba_.argmax(1)) == pytest.approx(est.trajectory_.max())
    assert est.weights_ == pytest.approx(np.bincount(est.indices_, minlength=3) / est.best_iteration_)
    assert est.trajectory_.max() >= max(macro_f1(y, p.argmax(1)) for p in P)


@pytest.mark.parametrize("cls", [SoftVoting, GeometricMean])
def test_blending_identical_runs_returns_the_run(cls, data):
    P, y, _ = data
    same = np.stack([P[1]] * 4)
    out = cls().fit(same, y).predict_proba(same)
    np.testing.assert_allclose(out, P[1], atol=1e-6)


def test_soft_voting_is_the_mean_of_probabilities(data):
    P, y, _ = data
    np.testing.assert_allclose(SoftVoting().fit(P, y).predict_proba(P), P.mean(0), atol=1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("bias", [False, True])
def test_every_method_predicts_rows_summing_to_one_and_survives_a_json_round_trip(method, bias, data):
    P, y, folds = data
    est = make_method(method, bias=bias).fit(P, y, folds)
    out = est.predict_proba(P)
    assert out.shape == (len(y), 18)
    assert est.oof_proba_.shape == (len(y), 18)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-9)
    back = from_state(json.loads(json.dumps(to_state(est))))
    np.testing.assert_allclose(back.predict_proba(P), out, atol=1e-10)


def test_bias_tuning_recovers_a_suppressed_class_and_reports_its_true_score(data):
    P, y, _ = data
    logp = log_proba(P.mean(0))
    logp[:, 4] -= 3.0  # class 4 is almost never predicted
    before = macro_f1(y, logp.argmax(1))
    b, score = tune_biases(logp, y)
    assert score == pytest.approx(macro_f1(y, (logp + b).argmax(1)), abs=1e-12)
    assert score > before + 0.02
    assert b[4] > 1.0


def test_bias_grid_scores_equal_argmax_one_value_at_a_time_even_with_ties(data):
    P, y, _ = data
    logp = np.round(log_proba(P.mean(0)))  # integer scores and an integer grid: many exact ties
    grid = np.arange(-3.0, 4.0)
    S = logp + np.random.default_rng(0).integers(-1, 2, 18)
    for c in (0, 5, 17):
        want = []
        for v in grid:
            T = S.copy()
            T[:, c] = logp[:, c] + v
            want.append(macro_f1(y, T.argmax(1)))
        np.testing.assert_allclose(class_bias_scores(S, logp, y, c, grid), want, atol=1e-12)


def test_bias_tuning_never_lowers_oof_macro_f1(data):
    P, y, folds = data
    for method in ALL_METHODS:
        est = make_method(method, bias=True).fit(P, y, folds)
        assert macro_f1(y, est.oof_proba_.argmax(1)) >= macro_f1(y, est.estimator_.oof_proba_.argmax(1)) - 1e-12


# --- honest estimate ----------------------------------------------------------------------------

class SpyEnsembler(Ensembler):
    """Soft voting that records the folds of the rows it was fitted on (``P`` carries a row id)."""

    def fit(self, P, y, folds=None):
        self.seen_folds_ = set(np.unique(folds).tolist())
        self.weights_ = np.full(len(P), 1 / len(P))
        self.oof_proba_ = self.predict_proba(P)
        return self

    def predict_proba(self, P):
        return np.tensordot(self.weights_, P, axes=1)


@pytest.mark.parametrize("est", [SpyEnsembler(), BiasTuning(SpyEnsembler())], ids=["spy", "spy+bias"])
def test_nested_estimate_never_fits_on_the_fold_it_scores(est, data):
    P, y, folds = data
    seen = []
    for f, held, fitted in nested_fits(est, P, y, folds):
        inner = fitted.estimator_ if isinstance(fitted, BiasTuning) else fitted
        assert f not in inner.seen_folds_
        assert inner.seen_folds_ == set(range(5)) - {f}
        assert (folds[held] == f).all() and held.sum() == (folds == f).sum()
        seen.append(f)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["weights", "caruana", "stacking"])
def test_nested_fold_model_is_unchanged_when_that_folds_labels_are_poisoned(method, data):
    P, y, folds = data
    rng = np.random.default_rng(0)
    poisoned = y.copy()
    poisoned[folds == 2] = rng.permutation(18 * 10)[: (folds == 2).sum()] % 18
    clean_fits = {f: e for f, _, e in nested_fits(make_method(method), P, y, folds)}
    poison_fits = {f: e for f, _, e in nested_fits(make_method(method), P, poisoned, folds)}
    probe = P[:, :50]
    np.testing.assert_array_equal(poison_fits[2].predict_proba(probe), clean_fits[2].predict_proba(probe))
    # the other folds did train on fold 2's rows, so their models see the poison
    assert any(not np.array_equal(poison_fits[f].predict_proba(probe), clean_fits[f].predict_proba(probe))
               for f in (0, 1, 3, 4))


def test_nested_estimate_equals_manual_fits_without_each_fold(data):
    P, y, folds = data
    got = nested_estimate(OptimizedWeights(), P, y, folds)
    for f in range(5):
        tr, te = folds != f, folds == f
        est = OptimizedWeights().fit(P[:, tr], y[tr])
        assert got[f] == pytest.approx(macro_f1(y[te], est.predict(P[:, te])))


def test_stacking_oof_rows_never_come_from_a_model_that_trained_on_them(data):
    P, y, folds = data
    poisoned = y.copy()
    poisoned[folds == 1] = (y[folds == 1] + 5) % 18
    clean, dirty = Stacking().fit(P, y, folds), Stacking().fit(P, poisoned, folds)
    np.testing.assert_array_equal(dirty.oof_proba_[folds == 1], clean.oof_proba_[folds == 1])
    assert not np.allclose(dirty.oof_proba_[folds != 1], clean.oof_proba_[folds != 1])


def test_stacking_predict_proba_equals_sklearn_logistic_regression_on_all_rows(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    P, y, folds = data
    est = Stacking(C=0.5).fit(P, y, folds)
    X = Stacking.features(P)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000)).fit(X, y)
    want = np.zeros((len(y), 18))
    want[:, ref.classes_] = ref.predict_proba(X)
    np.testing.assert_allclose(est.predict_proba(P), want, atol=1e-6)


# --- loading and validation ---------------------------------------------------------------------

def _edit_csv(path, fn):
    df = pd.read_csv(path, dtype={"image": str, "person": str})
    df = fn(df)
    df.to_csv(path, index=False)


def _swap_rows(df):
    df.iloc[[3, 4]] = df.iloc[[4, 3]].to_numpy()
    return df


def _nan(df):
    df.loc[5, "prob_2"] = np.nan
    return df


def _not_one(df):
    df.loc[6, "prob_0"] = df.loc[6, "prob_0"] + 0.05
    return df


def _set(col, row, value):
    def f(df):
        df.loc[row, col] = value
        return df
    return f


def _fingerprint(run_dir):
    rj = json.loads((run_dir / "run.json").read_text())
    rj["folds_fingerprint"] = "0123456789abcdef" * 2
    (run_dir / "run.json").write_text(json.dumps(rj))


BAD_INPUTS = {
    "image order": (lambda d: _edit_csv(d / "oof.csv", _swap_rows), "oof.csv", "row 5"),
    "folds fingerprint": (_fingerprint, "run.json", "folds_fingerprint"),
    "NaN probability": (lambda d: _edit_csv(d / "oof.csv", _nan), "oof.csv", "row 7"),
    "row not summing to 1": (lambda d: _edit_csv(d / "oof.csv", _not_one), "oof.csv", "row 8"),
    "wrong class count": (lambda d: _edit_csv(d / "oof.csv", lambda df: df.drop(columns=["prob_17"])), "oof.csv", "17 prob columns"),
    "other label": (lambda d: _edit_csv(d / "oof.csv", _set("label", 9, 17)), "oof.csv", "row 11"),
    "other fold": (lambda d: _edit_csv(d / "oof.csv", _set("fold", 10, 9)), "oof.csv", "row 12"),
    "missing row": (lambda d: _edit_csv(d / "oof.csv", lambda df: df.iloc[:-1]), "oof.csv", "rows"),
    "test ImageIDs": (lambda d: _edit_csv(d / "test.csv", _set("ImageID", 2, "zzz.jpg")), "test.csv", "row 4"),
    "test NaN": (lambda d: _edit_csv(d / "test.csv", _set("prob_3", 0, np.nan)), "test.csv", "row 2"),
    "logits": (lambda d: _edit_csv(d / "test.csv", _set("prob_3", 1, 4.0)), "test.csv", "row 3"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_misaligned_or_invalid_runs_are_refused_with_one_line_naming_the_file(case, oof):
    damage, fname, detail = BAD_INPUTS[case]
    damage(oof / "run1")
    with pytest.raises(KfError) as e:
        load_runs(oof)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(oof / "run1" / fname) in msg
    assert detail in msg


def test_valid_runs_load_aligned(oof):
    rs = load_runs(oof)
    assert rs.names == ["run0", "run1", "run2"]
    assert rs.oof.shape == (3, 280, 18) and rs.test.shape == (3, 21, 18)
    folds = pd.read_csv(oof / "folds.csv")
    np.testing.assert_array_equal(rs.y, folds["label"])
    np.testing.assert_array_equal(rs.folds, folds["fold"])


def test_unfinished_runs_and_the_ensemble_folder_are_skipped_unless_named(oof):
    rj = json.loads((oof / "run2" / "run.json").read_text())
    (oof / "run2" / "run.json").write_text(json.dumps({**rj, "finished": False}))
    (oof / "ensemble").mkdir()
    assert load_runs(oof).names == ["run0", "run1"]
    with pytest.raises(KfError, match=r"run2.*not finished"):
        load_runs(oof, ["run0", "run2"])


def test_test_ids_must_follow_info_csv(oof, tmp_path):
    ids = pd.read_csv(oof / "run0" / "test.csv")["ImageID"]
    info = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": ids, "ans": -1}).to_csv(info, index=False)
    assert load_runs(oof, info_csv=info).test.shape[1] == 21
    pd.DataFrame({"ImageID": ids[::-1], "ans": -1}).to_csv(info, index=False)
    with pytest.raises(KfError, match=r"run0.test\.csv: row 2: ImageID"):
        load_runs(oof, info_csv=info)


# --- CLI and outputs ----------------------------------------------------------------------------

def _invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_cli_writes_json_csvs_and_table_and_the_output_loads_as_a_run(oof, tmp_path):
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana", "--bias")
    assert res.exit_code == 0, res.output
    for name in ("run0", "run2", "caruana", "caruana+bias"):
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    ens = oof / "ensemble"
    doc = json.loads((ens / "caruana+bias.json").read_text())
    assert doc["method"] == "caruana" and doc["bias"] is True and doc["members"] == ["run0", "run1", "run2"]
    assert len(doc["weights"]) == 3 and len(doc["biases"]) == 18
    assert doc["tta"] == {"run0": "none", "run1": "none", "run2": "none"}
    assert doc["folds_fingerprint"] == json.loads((oof / "folds.json").read_text())["folds_fingerprint"]
    run_oof = pd.read_csv(oof / "run0" / "oof.csv")
    for name in ("caruana", "caruana+bias"):
        e_oof = pd.read_csv(ens / name / "oof.csv")
        assert list(e_oof.columns) == list(run_oof.columns)
        pd.testing.assert_frame_equal(e_oof[["image", "person", "fold", "label"]], run_oof[["image", "person", "fold", "label"]])
        assert list(pd.read_csv(ens / name / "test.csv").columns) == ["ImageID"] + PROB_COLS
        rj = json.loads((ens / name / "run.json").read_text())
        assert rj["kind"] == "ensemble" and rj["finished"] is True
    scores = pd.read_csv(ens / "caruana+bias_scores.csv")
    assert list(scores["name"]) == ["run0", "run1", "run2", "caruana", "caruana+bias"]
    assert [c for c in scores.columns if c.startswith("f1_")] == [f"f1_{c}" for c in range(18)]
    assert {"oof_macro_f1", "nested_macro_f1", "accuracy", "fold4_macro_f1"} <= set(scores.columns)
    # an ensemble output is a run: it loads, and soft voting of it with itself reproduces it
    rs = load_runs(oof, ["ensemble/caruana+bias"])
    np.testing.assert_allclose(rs.oof[0], e_oof[PROB_COLS].to_numpy(), atol=1e-7)


def test_cli_method_all_reports_every_method(oof, tmp_path):
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "all", "--runs", "run0,run2")
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(oof / "ensemble" / "all_scores.csv")
    assert list(scores["name"]) == ["run0", "run2"] + ALL_METHODS
    for m in ALL_METHODS:
        assert (oof / "ensemble" / f"{m}.json").is_file() and (oof / "ensemble" / m / "test.csv").is_file()


def test_best_follows_the_pooled_estimate_and_takes_a_blend_only_when_it_beats_the_best_run_credibly(oof, tmp_path):
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "all", "--bias")
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(oof / "ensemble" / "all+bias_scores.csv")  # 6 decimals: compared at 1e-6
    assert scores["chosen"].sum() == 1
    want = scores[scores["chosen"]].iloc[0]
    runs, blends = scores[scores["kind"] == "run"], scores[scores["kind"] == "ensemble"]
    base = runs["pooled_macro_f1"].max()
    credible = blends[(blends["pooled_macro_f1"] > base + 1e-6) & (blends["pooled_p_better"] >= 0.9)]
    if want["kind"] == "run":  # the best single run, and no blend beats it credibly
        assert want["pooled_macro_f1"] == pytest.approx(base, abs=1e-6) and credible.empty
    else:  # a credible blend, the highest of them
        assert want["pooled_p_better"] >= 0.9 and want["pooled_macro_f1"] > base - 1e-6
        assert want["pooled_macro_f1"] >= credible["pooled_macro_f1"].max() - 1e-6
    meta = json.loads((oof / "ensemble" / "best" / "run.json").read_text())
    assert meta["chosen"] == want["name"] and meta["kind"] == "ensemble" and meta["finished"] is True
    assert list(scores.loc[scores["chosen"], "name"]) == [want["name"]]
    assert meta["reason"].startswith(f"{want['name']}:") and meta["reason"] in res.output
    src = oof / want["name"] if want["kind"] == "run" else oof / "ensemble" / want["name"]
    for name in ("oof.csv", "test.csv"):
        np.testing.assert_allclose(pd.read_csv(oof / "ensemble" / "best" / name)[PROB_COLS].to_numpy(),
                                   pd.read_csv(src / name)[PROB_COLS].to_numpy(), atol=1e-7)


def test_a_single_run_is_best_when_no_blend_beats_it_honestly(tmp_path):
    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=40, n_runs=2, k=5, n_test=21, seed=3, strength=[3.0, 0.0])
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft")
    assert res.exit_code == 0, res.output
    assert json.loads((d / "ensemble" / "best" / "run.json").read_text())["chosen"] == "run0"


def test_a_later_weaker_call_keeps_best_and_a_stronger_one_replaces_it(tmp_path):
    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=40, n_runs=3, k=5, n_test=21, seed=3, strength=[3.0, 0.5, 0.0])
    best = d / "ensemble" / "best"
    assert _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft", "--runs", "run0,run1").exit_code == 0
    first = {n: (best / n).read_bytes() for n in ("oof.csv", "test.csv", "run.json")}
    meta = json.loads(first["run.json"])
    assert meta["members"] == ["run0", "run1"]
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft", "--runs", "run1,run2",
                  "--name", "weak")
    assert res.exit_code == 0, res.output
    weaker = pd.read_csv(d / "ensemble" / "weak_scores.csv")["pooled_macro_f1"].max()
    assert weaker < meta["selection_score"]
    assert {n: (best / n).read_bytes() for n in first} == first
    assert f"kept {best}/: {meta['chosen']} of run0,run1" in res.output
    # a call whose best is higher replaces it: run2 becomes a near-perfect run
    df = pd.read_csv(d / "run2" / "oof.csv")
    df[PROB_COLS] = np.where(np.arange(18) == df["label"].to_numpy()[:, None], 0.83, 0.01)
    df.to_csv(d / "run2" / "oof.csv", index=False)
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft", "--runs", "run1,run2",
                  "--name", "weak")
    assert res.exit_code == 0, res.output
    new = json.loads((best / "run.json").read_text())
    run2 = pd.read_csv(d / "ensemble" / "weak_scores.csv").set_index("name").loc["run2", "pooled_macro_f1"]
    assert run2 > meta["selection_score"]
    # weak_scores.csv holds 6 decimals, run.json the unrounded value
    assert new["chosen"] == "run2" and new["selection_score"] == pytest.approx(run2, abs=1e-6) and f"wrote {best}/" in res.output
    # other folds: the old best is not comparable and is replaced
    rj = json.loads((best / "run.json").read_text())
    rj["folds_fingerprint"] = "0" * 32
    rj["selection_score"] = 1.0
    (best / "run.json").write_text(json.dumps(rj))
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft", "--runs", "run0,run1")
    assert res.exit_code == 0, res.output
    assert json.loads((best / "run.json").read_text())["members"] == ["run0", "run1"]


def test_an_ensemble_of_other_runs_is_not_replaced_without_overwrite(oof, tmp_path):
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "all", "--bias").exit_code == 0
    before = {p: p.read_bytes() for p in (oof / "ensemble").rglob("*") if p.is_file()}
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana", "--runs", "run1,run2")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {oof / 'ensemble' / 'caruana.json'}: already holds caruana of run0, run1, run2; this call blends run1, "
        "run2: pass --name to keep both, or --overwrite to replace it"]
    assert {p: p.read_bytes() for p in (oof / "ensemble").rglob("*") if p.is_file()} == before
    # the same runs are refitted without asking; --overwrite replaces; --name keeps both
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana").exit_code == 0
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana", "--runs", "run1,run2",
                   "--name", "c12").exit_code == 0
    assert json.loads((oof / "ensemble" / "caruana.json").read_text())["members"] == ["run0", "run1", "run2"]
    assert json.loads((oof / "ensemble" / "c12.json").read_text())["members"] == ["run1", "run2"]
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana", "--runs", "run1,run2",
                  "--overwrite")
    assert res.exit_code == 0 and "replaced (--overwrite) the earlier caruana of run0, run1, run2" in res.output
    assert json.loads((oof / "ensemble" / "caruana.json").read_text())["members"] == ["run1", "run2"]


def test_an_ensemble_is_refused_as_a_member_and_nothing_is_written(oof, tmp_path):
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "soft").exit_code == 0
    before = {p: p.read_bytes() for p in (oof / "ensemble").rglob("*") if p.is_file()}
    for member in ("ensemble/soft", "ensemble/best"):
        res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "caruana", "--runs", f"run0,{member}")
        assert res.exit_code == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --runs: {member} is an ensemble (of run0, run1, run2)")
        assert "--runs run0,run1,run2" in lines[0]
    assert {p: p.read_bytes() for p in (oof / "ensemble").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("args, needle", [
    (["--runs", "run0,nope"], "nope"),
    (["--method", "all", "--name", "x"], "--name"),
    (["--name", "a/b"], "--name"),
    (["--name", "best"], "--name 'best' is reserved"),
])
def test_cli_bad_input_exits_2_with_one_error_line(args, needle, oof, tmp_path):
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (oof / "ensemble").exists()


def test_cli_refuses_a_run_with_nan_and_names_it(oof, tmp_path):
    _edit_csv(oof / "run2" / "oof.csv", _nan)
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata")
    assert res.exit_code == 2
    assert res.stderr.strip() == res.stderr.strip().splitlines()[0]
    assert res.stderr.startswith(f"error: {oof / 'run2' / 'oof.csv'}: row 7")


def test_ensemble_help_shows_an_example():
    res = _invoke("ensemble", "--help")
    assert res.exit_code == 0 and "kf ensemble --oof oof --method caruana --bias" in res.output


# --- predict ------------------------------------------------------------------------------------

@pytest.fixture
def fake_inference(monkeypatch):
    """A fake ``kfold.inference.predict_images`` that returns a run's own test.csv; records the TTA asked."""
    calls = []

    def predict_images(run_dir, images_dir, tta=None, batch_size=64):
        calls.append((run_dir.name, tta))
        df = pd.read_csv(run_dir / "test.csv")
        return list(df["ImageID"]), df[PROB_COLS].to_numpy()

    mod = types.ModuleType("kfold.inference")
    mod.predict_images = predict_images
    monkeypatch.setitem(sys.modules, "kfold.inference", mod)
    return calls


@pytest.mark.parametrize("method", ALL_METHODS)
def test_predict_combines_members_like_the_ensemble_test_csv(method, oof, tmp_path, fake_inference):
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", method, "--bias").exit_code == 0
    out = tmp_path / "pred.csv"
    res = _invoke("predict", f"ensemble/{method}+bias", "--images", tmp_path, "--out", out, "--oof", oof)
    assert res.exit_code == 0, res.output
    got, want = pd.read_csv(out), pd.read_csv(oof / "ensemble" / f"{method}+bias" / "test.csv")
    assert list(got["ImageID"]) == list(want["ImageID"])
    np.testing.assert_allclose(got[PROB_COLS].to_numpy(), want[PROB_COLS].to_numpy(), atol=1e-6)
    assert fake_inference == [("run0", "none"), ("run1", "none"), ("run2", "none")]


def test_predict_of_ensemble_best_applies_the_chosen_blend(oof, tmp_path, fake_inference):
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "all", "--bias").exit_code == 0
    out = tmp_path / "pred.csv"
    res = _invoke("predict", "ensemble/best", "--images", tmp_path, "--out", out, "--oof", oof)
    assert res.exit_code == 0, res.output
    got, want = pd.read_csv(out), pd.read_csv(oof / "ensemble" / "best" / "test.csv")
    np.testing.assert_allclose(got[PROB_COLS].to_numpy(), want[PROB_COLS].to_numpy(), atol=1e-6)


def test_predict_of_a_kept_best_applies_its_own_blend_after_ensemble_name_is_rewritten(tmp_path, fake_inference):
    oof = tmp_path / "oof"
    write_synthetic_runs(oof, n_people=40, n_runs=3, k=5, n_test=21, seed=3, strength=[1.0, 1.0, 1.0])
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "weights").exit_code == 0
    best = oof / "ensemble" / "best"
    meta = json.loads((best / "run.json").read_text())
    assert meta["chosen"] == "weights" and (best / "ensemble.json").is_file()  # a blend of 3 equal runs beats each
    res = _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "weights", "--runs", "run0,run1",
                  "--overwrite")
    assert res.exit_code == 0 and "kept" in res.output  # ensemble/weights now blends run0,run1; best keeps run0..run2
    assert json.loads((oof / "ensemble" / "weights.json").read_text())["members"] == ["run0", "run1"]
    out = tmp_path / "pred.csv"
    assert _invoke("predict", "ensemble/best", "--images", tmp_path, "--out", out, "--oof", oof).exit_code == 0
    np.testing.assert_allclose(pd.read_csv(out)[PROB_COLS].to_numpy(),
                               pd.read_csv(best / "test.csv")[PROB_COLS].to_numpy(), atol=1e-6)
    assert [c[0] for c in fake_inference] == ["run0", "run1", "run2"]


def test_predict_never_replaces_an_existing_file_without_overwrite(oof, tmp_path, fake_inference):
    out = tmp_path / "pred.csv"
    out.write_text("mine\n")
    res = _invoke("predict", "run1", "--images", tmp_path, "--out", out, "--oof", oof)
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {out}: already exists (pass --overwrite to replace it)"
    assert out.read_text() == "mine\n" and fake_inference == []  # refused before any prediction
    assert _invoke("predict", "run1", "--images", tmp_path, "--out", out, "--oof", oof, "--overwrite").exit_code == 0
    assert out.read_text().startswith("ImageID,prob_0")


def test_predict_passes_the_requested_tta_to_every_member(oof, tmp_path, fake_inference):
    assert _invoke("ensemble", "--oof", oof, "--data", tmp_path / "nodata", "--method", "soft").exit_code == 0
    res = _invoke("predict", "ensemble/soft", "--images", tmp_path, "--out", tmp_path / "p.csv", "--oof", oof, "--tta", "d4")
    assert res.exit_code == 0, res.output
    assert fake_inference == [("run0", "d4"), ("run1", "d4"), ("run2", "d4")]
    res = _invoke("predict", "run1", "--images", tmp_path, "--out", tmp_path / "q.csv", "--oof", oof)
    assert res.exit_code == 0 and fake_inference[-1] == ("run1", "none")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "q.csv"), pd.read_csv(oof / "run1" / "test.csv"), atol=1e-7)
