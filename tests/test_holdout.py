"""The local holdout and honest selection: folds, training, ensembling, the noise-aware choice of ensemble/best."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_train import tiny_config

from ensemble import load_runs, macro_f1, to_state
from ensemble.pipeline import fit_method, score_table
from ensemble.selection import bootstrap_macro_f1, choose
from ensemble.synth import write_synthetic_runs
from kf.cli import main
from kfold import device, fold
from kfold.data import load_data
from kfold.stagefiles import PROB_COLS
from kfold.train import train_runs


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_holdout_withholds_a_stratified_share_of_people_from_every_fold(tiny_data, tmp_path):
    oof = tmp_path / "oof"
    res = _invoke("folds", "--data", tiny_data, "--oof", oof, "--k", 3, "--holdout", 0.25)
    assert res.exit_code == 0, res.output
    folds = pd.read_csv(oof / "folds.csv", dtype={"person": str})
    hold = pd.read_csv(oof / "holdout.csv", dtype={"person": str})
    meta = json.loads((oof / "folds.json").read_text())
    assert hold["person"].nunique() == 5 == meta["n_holdout_people"]  # round(0.25 * 20 people)
    assert set(hold["person"]).isdisjoint(folds["person"])
    assert (hold.groupby("person").size() == 7).all()  # every image of a holdout person, none in a fold
    assert len(hold) + len(folds) == 140 and list(hold.columns) == ["image", "person", "label"]
    assert sorted(folds["fold"].unique()) == [0, 1, 2] and meta["holdout"] == 0.25
    assert "5 people (0.25 of all), 35 images withheld from every fold" in res.output
    again = _invoke("folds", "--data", tiny_data, "--oof", oof, "--k", 3, "--holdout", 0.25)
    assert again.exit_code == 0 and "reused" in again.output
    other = CliRunner().invoke(main, ["folds", "--data", str(tiny_data), "--oof", str(oof), "--k", "3", "--holdout", "0.3"])
    assert other.exit_code == 2 and "holdout=0.25" in other.output and "holdout=0.3" in other.output
    # without --holdout the same folder is refused too (other settings), and --force removes holdout.csv
    assert _invoke("folds", "--data", tiny_data, "--oof", oof, "--k", 3, "--force").exit_code == 0
    assert not (oof / "holdout.csv").exists() and "holdout" not in json.loads((oof / "folds.json").read_text())


@pytest.mark.parametrize("fraction", ["0", "1", "-0.1", "nan"])
def test_a_holdout_fraction_outside_0_1_is_refused_with_one_line(fraction, tiny_data, tmp_path):
    res = CliRunner().invoke(main, ["folds", "--data", str(tiny_data), "--oof", str(tmp_path / "o"), "--holdout", fraction])
    if fraction == "0":  # 0 means no holdout
        assert res.exit_code == 0 and not (tmp_path / "o" / "holdout.csv").exists()
    else:
        assert res.exit_code == 2 and "--holdout" in res.output and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def trained_with_holdout(tiny_data, tmp_path_factory):
    """A tiny run on 2 folds with a 25% holdout; records the images each fold trained on."""
    tmp = tmp_path_factory.mktemp("holdout")
    seen: dict[int, list[str]] = {}
    data = load_data(tiny_data, tmp / "oof", k=2, seed=0, holdout=0.25)
    real_loader = fold.FoldTrainer._loader

    def loader(self, epoch):
        seen[self.fold] = list(self.data.folds["image"].iloc[self.tr_idx])
        return real_loader(self, epoch)

    fold.FoldTrainer._loader = loader
    try:
        meta = train_runs([tiny_config(tmp)], data, tmp / "oof", echo=lambda s: None, progress=False)[0]
    finally:
        fold.FoldTrainer._loader = real_loader
    return tmp / "oof", data, meta, seen


@pytest.mark.trains
def test_training_never_sees_the_holdout_and_predicts_it_like_the_test_set(trained_with_holdout):
    oof, data, meta, seen = trained_with_holdout
    hold_images = set(data.holdout["image"])
    assert len(hold_images) == 35 and all(hold_images.isdisjoint(imgs) for imgs in seen.values())
    run = oof / "tiny"
    hold = pd.read_csv(run / "holdout.csv", dtype={"person": str})
    assert list(hold["image"]) == list(data.holdout["image"])  # oof/holdout.csv order
    per_fold = [pd.read_csv(run / f"fold{f}" / "holdout.csv")[PROB_COLS].to_numpy() for f in range(2)]
    # run = mean of the fold models, exactly as test.csv is assembled
    np.testing.assert_allclose(hold[PROB_COLS].to_numpy(), np.mean(per_fold, axis=0), atol=1e-7)
    test_per_fold = [pd.read_csv(run / f"fold{f}" / "test.csv")[PROB_COLS].to_numpy() for f in range(2)]
    np.testing.assert_allclose(pd.read_csv(run / "test.csv")[PROB_COLS].to_numpy(), np.mean(test_per_fold, axis=0), atol=1e-7)
    # the same fold models applied to the holdout images by kf's inference path give the same probabilities
    from kfold.cache import build_cache
    from kfold.inference import _predict, fold_models, load_run

    _, cfg = load_run(run)
    cache = build_cache([data.root / p for p in data.holdout["image"]], tuple(cfg.image_size), oof / "cache")
    again = np.mean([_predict(m, cache, cfg, device.resolve_device(cfg), cfg.tta) for _, m in fold_models(run, cfg, "cpu")], 0)
    np.testing.assert_allclose(hold[PROB_COLS].to_numpy(), again, atol=1e-5)  # same machine, same models
    assert meta["holdout_macro_f1"] == pytest.approx(macro_f1(hold["label"], hold[PROB_COLS].to_numpy().argmax(1)), abs=1e-9)
    rs = load_runs(oof, ["tiny"])
    assert rs.holdout.shape == (1, 35, 18) and list(rs.holdout_keys["image"]) == list(data.holdout["image"])


def test_holdout_rows_never_enter_any_fit_or_the_default_choice(tmp_path):
    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=60, n_runs=3, k=5, n_test=21, seed=5, n_holdout_people=20)
    rs = load_runs(d)
    scrambled = load_runs(d)
    scrambled.holdout = np.random.default_rng(0).dirichlet(np.ones(18), size=scrambled.holdout.shape[:2])
    for method in ("weights", "caruana", "stacking"):
        a, b = fit_method(method, rs, bias=True), fit_method(method, scrambled, bias=True)
        for fa, fb in zip(a, b):
            assert json.dumps(to_state(fa.estimator)) == json.dumps(to_state(fb.estimator))
            np.testing.assert_array_equal(fa.test_proba, fb.test_proba)
            np.testing.assert_array_equal(fa.nested_proba, fb.nested_proba)
            assert not np.allclose(fa.holdout_proba, fb.holdout_proba)  # the holdout is predicted, never fitted
    fitted = [f for m in ("soft", "weights") for f in fit_method(m, rs, bias=True)]
    (ta, ca), (tb, cb) = score_table(rs, fitted), score_table(scrambled, [f for m in ("soft", "weights")
                                                                          for f in fit_method(m, scrambled, bias=True)])
    assert ca.index == cb.index and ca.reason == cb.reason
    assert not np.allclose(ta["holdout_macro_f1"], tb["holdout_macro_f1"])


def test_a_blend_of_independent_runs_that_truly_helps_is_chosen(tmp_path):
    d = tmp_path / "oof"
    # two equally strong runs with independent errors: their mean is right more often than either
    write_synthetic_runs(d, n_people=300, n_runs=2, k=5, n_test=21, seed=1, strength=[1.6, 1.6], shared=0.0,
                         n_holdout_people=100)
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "soft")
    assert res.exit_code == 0, res.output
    meta = json.loads((d / "ensemble" / "best" / "run.json").read_text())
    scores = pd.read_csv(d / "ensemble" / "soft_scores.csv").set_index("name")
    assert meta["chosen"] == "soft" and scores.loc["soft", "pooled_p_better"] >= 0.9
    # and the holdout agrees: the blend is better there too
    assert scores.loc["soft", "holdout_macro_f1"] > scores.loc[["run0", "run1"], "holdout_macro_f1"].max()
    assert "beats the best single run" in meta["reason"] and "chosen (by the pooled nested estimate): soft:" in res.output


def test_a_blend_that_only_fits_noise_is_not_chosen_even_when_its_in_sample_score_is_higher(tmp_path):
    d = tmp_path / "oof"
    # a real run and a run of pure noise, few people: bias tuning and weights find "gains" on the OOF rows
    write_synthetic_runs(d, n_people=40, n_runs=2, k=5, n_test=21, seed=3, strength=[2.0, 0.0])
    res = _invoke("ensemble", "--oof", d, "--data", tmp_path / "nodata", "--method", "all", "--bias")
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(d / "ensemble" / "all+bias_scores.csv").set_index("name")
    assert scores["oof_macro_f1"].drop(["run0", "run1"]).max() > scores.loc["run0", "oof_macro_f1"]  # fits noise in-sample
    meta = json.loads((d / "ensemble" / "best" / "run.json").read_text())
    assert meta["chosen"] == "run0" and "the best single run" in meta["reason"]


def test_choose_prefers_the_best_run_unless_a_blend_beats_it_in_enough_resamples():
    names, kinds = ["a", "b", "blend"], ["run", "run", "ensemble"]
    est = np.array([0.50, 0.40, 0.51])
    boot = np.array([np.full(10, 0.50), np.full(10, 0.40), np.r_[np.full(8, 0.52), np.full(2, 0.49)]])
    assert choose(names, kinds, est, boot, confidence=0.9).index == 0  # 80% of resamples < 90%
    c = choose(names, kinds, est, boot, confidence=0.75)
    assert c.index == 2 and c.baseline == 0 and c.p_better.tolist() == [0.0, 0.0, 0.8] and "80%" in c.reason
    with pytest.raises(ValueError):
        choose(["blend"], ["ensemble"], est[:1], boot[:1])


def test_person_bootstrap_resamples_people_not_images_and_is_paired():
    y = np.repeat(np.arange(6), 7)  # 6 people x 7 images, one class each
    groups = np.repeat(np.arange(6), 7)
    perfect, wrong_first = y.copy(), y.copy()
    wrong_first[:7] = 1  # every image of person 0 wrong
    boot = bootstrap_macro_f1(y, np.stack([perfect, wrong_first]), groups, n_boot=200, seed=0)
    assert boot.shape == (2, 200)
    # macro F1 over 18 classes: a resample holding c of the 6 classes scores c/18 for perfect predictions
    assert set(np.round(boot[0] * 18, 6)) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert (boot[1] <= boot[0] + 1e-12).all()  # paired: the same people in both rows of a column
    drawn_without_person0 = np.isclose(boot[1], boot[0])
    assert 0 < drawn_without_person0.mean() < 1  # (5/6)^6 = 33% of resamples leave person 0 out


def test_select_on_holdout_needs_a_holdout_and_is_recorded(tmp_path):
    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=40, n_runs=2, k=5, n_test=21, seed=3)
    res = CliRunner().invoke(main, ["ensemble", "--oof", str(d), "--data", str(tmp_path / "nodata"), "--method", "soft",
                                    "--select-on", "holdout"])
    assert res.exit_code == 2 and "no local holdout" in res.output and not (d / "ensemble").exists()
    h = tmp_path / "h"
    write_synthetic_runs(h, n_people=40, n_runs=2, k=5, n_test=21, seed=3, n_holdout_people=10)
    res = _invoke("ensemble", "--oof", h, "--data", tmp_path / "nodata", "--method", "soft", "--select-on", "holdout")
    assert res.exit_code == 0, res.output
    meta = json.loads((h / "ensemble" / "best" / "run.json").read_text())
    scores = pd.read_csv(h / "ensemble" / "soft_scores.csv").set_index("name")
    assert meta["select_on"] == "holdout" and "holdout macro F1" in meta["reason"]
    assert meta["selection_score"] == pytest.approx(scores.loc[meta["chosen"], "holdout_macro_f1"], abs=1e-6)
    assert (h / "ensemble" / "best" / "holdout.csv").is_file() and (h / "ensemble" / "soft" / "holdout.csv").is_file()


def test_a_runs_holdout_csv_that_differs_from_oof_holdout_csv_is_refused_naming_the_row(tmp_path):
    from kfold.io import KfError

    d = tmp_path / "oof"
    write_synthetic_runs(d, n_people=20, n_runs=2, k=5, n_test=7, seed=2, n_holdout_people=5)
    df = pd.read_csv(d / "run1" / "holdout.csv")
    df.loc[3, "image"] = "train/images/elsewhere/mask1.jpg"
    df.to_csv(d / "run1" / "holdout.csv", index=False)
    with pytest.raises(KfError, match=r"run1/holdout\.csv: row 5: image 'train/images/elsewhere/mask1\.jpg' differs from .+ "
                                      r"in oof/holdout\.csv"):
        load_runs(d)
