"""Task heads (kfold/heads.py): the 18-class <-> task mappings, the age-in-years head, the loss, and runs of each kind."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from test_train import check_predict_reproduces_test_csv, check_resume, tiny_config

from kf.cli import main
from kfold import labels as L
from kfold import metrics
from kfold.config import TrainConfig, validate
from kfold.data import load_data
from kfold.heads import (
    TASKS,
    TaskLoss,
    TaskModel,
    age_band_log_probs,
    build_task_loss,
    joint_from_marginals,
    joint_log_probs,
    task_accuracy,
    task_marginals,
    training_targets,
)
from kfold.io import KfError
from kfold.stagefiles import PROB_COLS
from kfold.train import train_runs
from kfold.tta import tta_compose, tta_probs

CUTS = torch.tensor([30.0, 60.0])


def random_marginals(rng, n):
    return [rng.dirichlet(np.ones(k), size=n) for k in (3, 2, 3)]


# -- mappings ------------------------------------------------------------------------------------------------
def test_the_joint_of_task_marginals_sums_to_one_and_gives_the_marginals_back():
    rng = np.random.default_rng(0)
    pm, pg, pa = random_marginals(rng, 50)
    joint = joint_log_probs(*(torch.log(torch.tensor(p)) for p in (pm, pg, pa))).exp().numpy()
    np.testing.assert_allclose(joint.sum(1), 1, atol=1e-12)
    np.testing.assert_allclose(joint, joint_from_marginals(pm, pg, pa), atol=1e-12)
    for got, want in zip(task_marginals(joint), (pm, pg, pa)):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_class_order_of_the_joint_is_kfold_labels_encode():
    for c in range(18):
        m, g, a = L.decode(c)
        one = [np.eye(k)[[v]] for k, v in ((3, m), (2, g), (3, a))]
        assert joint_from_marginals(*one).argmax() == L.encode(m, g, a) == c
        assert [int(t.argmax()) for t in task_marginals(np.eye(18)[[c]])] == [m, g, a]


def test_task_marginals_of_any_joint_are_the_row_sums_over_the_other_tasks():
    p = np.random.default_rng(1).dirichlet(np.ones(18), size=20)
    pm, pg, pa = task_marginals(p)
    np.testing.assert_allclose(pm[:, 1], p[:, 6:12].sum(1))
    np.testing.assert_allclose(pg[:, 1], p[:, [3, 4, 5, 9, 10, 11, 15, 16, 17]].sum(1))
    np.testing.assert_allclose(pa[:, 2], p[:, 2::3].sum(1))
    acc = task_accuracy(joint_from_marginals(pm, pg, pa), p.argmax(1))
    assert set(acc) == set(TASKS) and all(0 <= v <= 1 for v in acc.values())


def test_age_band_probabilities_sum_to_one_and_move_monotonically_with_the_predicted_age():
    mu = torch.linspace(0, 100, 401, dtype=torch.float64)
    for sigma in (0.3, 3.0, 15.0):
        p = age_band_log_probs(mu, torch.full_like(mu, sigma), CUTS.double()).exp()
        np.testing.assert_allclose(p.sum(1).numpy(), 1, atol=1e-9)
        assert (p[1:, 0] <= p[:-1, 0] + 1e-12).all() and (p[1:, 2] >= p[:-1, 2] - 1e-12).all()
    # whole years, continuity-corrected at cut - 0.5: a sharp Gaussian at 59 is band 1, at 60 band 2, at 29 band 0
    ages = torch.tensor([29.0, 30.0, 59.0, 60.0, 18.0, 75.0])
    sharp = age_band_log_probs(ages, torch.full_like(ages, 0.1), CUTS).exp()
    assert sharp.argmax(1).tolist() == L.age_band(ages.numpy(), (30, 60)).tolist() == [0, 1, 1, 2, 0, 2]
    far = age_band_log_probs(torch.tensor([-1e4, 1e4]), torch.tensor([0.05, 0.05]), CUTS)
    assert torch.isfinite(far).all()


# -- the model ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=0)


@pytest.mark.parametrize("age_head", ["band", "years"])
def test_task_model_softmax_is_the_product_of_its_task_marginals_also_under_tta(backbone, age_head):
    model = TaskModel(backbone, age_head=age_head, age_cuts=(30, 58)).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_tasks(x)
        lp = model.task_log_probs(out)
        p18 = torch.softmax(model(x), 1)
    np.testing.assert_allclose(p18.sum(1).numpy(), 1, atol=1e-5)
    want = joint_from_marginals(*(lp[t].exp().double().numpy() for t in TASKS))
    np.testing.assert_allclose(p18.numpy(), want, atol=1e-6)
    for got, t in zip(task_marginals(p18.numpy()), TASKS):
        np.testing.assert_allclose(got, lp[t].exp().numpy(), atol=1e-6)
    if age_head == "years":
        mu, sigma = model.age_gaussian(out["age"])
        np.testing.assert_allclose(lp["age"].exp().numpy(), age_band_log_probs(mu, sigma, torch.tensor([30.0, 58.0])).exp().numpy(),
                                   atol=1e-6)
    # hflip TTA averages products: still 18 probabilities summing to 1, each view a product
    tta = tta_probs(model, x, tta_compose("hflip"))
    np.testing.assert_allclose(tta.sum(1).numpy(), 1, atol=1e-5)
    flipped = torch.softmax(model(torch.flip(x, dims=[3])), 1)
    np.testing.assert_allclose(tta.numpy(), ((p18 + flipped) / 2).detach().numpy(), atol=1e-6)


def test_a_single_task_model_spreads_the_other_tasks_uniformly(backbone):
    model = TaskModel(backbone, tasks=("gender",)).eval()
    with torch.no_grad():
        p = torch.softmax(model(torch.randn(3, 3, 32, 32)), 1).numpy()
    pm, pg, pa = task_marginals(p)
    np.testing.assert_allclose(pm, 1 / 3, atol=1e-6)
    np.testing.assert_allclose(pa, 1 / 3, atol=1e-6)
    assert list(model.heads) == ["gender"]


# -- the loss ----------------------------------------------------------------------------------------------
def test_task_loss_is_the_weighted_sum_of_task_cross_entropies_for_labels_and_one_hot_soft_targets(backbone):
    model = TaskModel(backbone)
    out = model.forward_tasks(torch.randn(6, 3, 32, 32))
    y = torch.tensor([0, 4, 7, 11, 14, 17])
    weights = {"mask": 1.0, "gender": 0.5, "age": 2.0}
    loss = TaskLoss(model, {t: torch.nn.CrossEntropyLoss() for t in TASKS}, weights)
    m, g, a = (torch.as_tensor(v) for v in L.decode(y.numpy()))
    want = F.cross_entropy(out["mask"], m) + 0.5 * F.cross_entropy(out["gender"], g) + 2 * F.cross_entropy(out["age"], a)
    torch.testing.assert_close(loss(out, y), want)
    torch.testing.assert_close(loss(out, F.one_hot(y, 18).float()), want)
    # a mixed (soft) target: each task's target is its marginal
    soft = 0.7 * F.one_hot(y, 18).float() + 0.3 * F.one_hot(y.flip(0), 18).float()
    sm = task_marginals(soft)
    want_soft = sum(w * F.cross_entropy(out[t], s) for t, w, s in zip(TASKS, weights.values(), sm))
    torch.testing.assert_close(loss(out, soft), want_soft)
    focal = build_task_loss(validate(TrainConfig(model="test_efficientnet", heads="tasks", loss="focal"), "t"), model,
                            y.numpy(), torch.device("cpu"))
    with pytest.raises(KfError, match="soft .* need loss: ce"):
        focal(out, soft)


def test_years_loss_is_the_gaussian_nll_and_falls_back_to_band_cross_entropy_without_years(backbone):
    model = TaskModel(backbone, age_head="years", age_cuts=(30, 60))
    out = model.forward_tasks(torch.randn(4, 3, 32, 32))
    loss = TaskLoss(model, {t: torch.nn.CrossEntropyLoss() for t in ("mask", "gender")}, {"mask": 0, "gender": 0, "age": 1})
    mu, sigma = model.age_gaussian(out["age"])
    years = torch.tensor([20.0, 45.0, 59.0, 61.0])
    labels = torch.tensor([0.0, 1.0, 1.0, 2.0])
    nll = F.gaussian_nll_loss((mu - 40) / 20, (years - 40) / 20, (sigma / 20) ** 2)
    torch.testing.assert_close(loss(out, torch.stack([labels, years], 1)), nll)
    unknown = torch.stack([labels, torch.full((4,), float("nan"))], 1)
    band_ce = F.nll_loss(age_band_log_probs(mu, sigma, CUTS), labels.long())
    torch.testing.assert_close(loss(out, unknown), band_ce)
    loss(out, unknown).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.heads["age"].parameters())


def test_training_targets_use_the_training_cuts_and_carry_years_for_a_years_head():
    labels = L.encode(np.array([0, 2, 1]), np.array([1, 0, 0]), L.age_band([58, 59, 29], (30, 60)))
    ages = np.array([58.0, 59.0, 29.0], dtype=np.float32)
    cfg = validate(TrainConfig(model="test_efficientnet", train_age_cuts=[30, 58]), "t")
    y = training_targets(cfg, labels, ages, [30.0, 60.0])
    assert L.decode(y)[2].tolist() == [2, 2, 0] and L.decode(y)[0].tolist() == [0, 2, 1]
    same = training_targets(validate(TrainConfig(model="test_efficientnet"), "t"), labels, None, [30.0, 60.0])
    assert same.tolist() == labels.tolist()
    years_cfg = validate(TrainConfig(model="test_efficientnet", heads="tasks", age_head="years"), "t")
    yy = training_targets(years_cfg, labels, ages, [30.0, 60.0])
    assert yy.shape == (3, 2) and yy[:, 1].tolist() == [58, 59, 29] and yy[:, 0].tolist() == labels.tolist()
    with pytest.raises(KfError, match="need the ages in years"):
        training_targets(years_cfg, labels, None, [30.0, 60.0])


@pytest.mark.parametrize("extra, message", [
    ({"task": "mask"}, "task: needs heads: tasks"),
    ({"age_head": "years"}, "age_head: needs heads: tasks"),
    ({"heads": "tasks", "class_weights": [1] * 18}, "18 class weights do not apply to task heads"),
    ({"heads": "tasks", "task_weights": {"mask": 1, "age_years": 2}}, "task_weights: unknown key 'age_years'; valid: mask, gender, age"),
    ({"heads": "tasks", "task_weights": {"mask": -1}}, "task_weights: mask: expected a finite number >= 0, got -1"),
    ({"train_age_cuts": [58, 30]}, "train_age_cuts: expected null or two increasing ages"),
    ({"heads": "multi"}, "heads: 'multi' is not one of joint, tasks"),
])
def test_bad_task_head_settings_are_one_line_errors(extra, message):
    with pytest.raises(KfError, match=message):
        validate(TrainConfig(model="test_efficientnet", **extra), "x.yaml")


# -- runs of each new kind -------------------------------------------------------------------------------------
KINDS = {
    "multi-head": ["heads=tasks", "task_weights={mask: 1, gender: 1, age: 2}"],
    "age-years": ["heads=tasks", "age_head=years", "train_age_cuts=[30,58]"],
    "single-task": ["heads=tasks", "task=gender", "loss=focal", "class_weights=balanced"],
    "joint-train-cuts": ["train_age_cuts=[30,58]"],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_new_run_kind_trains_and_resumes_to_the_same_oof(kind, tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, extra=KINDS[kind] + ["epochs=2", "augment.affine=0.5", "drop_rate=0.2"])
    a = check_resume(cfg, tiny_data, tmp_path, monkeypatch)
    folds = load_data(tiny_data, tmp_path / "a", k=2, seed=0).folds
    p = a[PROB_COLS].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (a["label"].to_numpy() == folds.loc[folds["fold"] == 0, "label"].to_numpy()).all()  # scoring cuts
    if kind == "single-task":  # gender trained, mask and age left uniform
        pm, _, pa = task_marginals(p)
        np.testing.assert_allclose(pm, 1 / 3, atol=1e-5)
        np.testing.assert_allclose(pa, 1 / 3, atol=1e-5)


@pytest.fixture(scope="module")
def task_runs(tiny_data, tmp_path_factory):
    """Four finished 2-fold runs: a years-head multi-head run, and mask, gender and age single-task runs."""
    tmp = tmp_path_factory.mktemp("tasks")
    cfgs = [tiny_config(tmp, "years", ["heads=tasks", "age_head=years", "train_age_cuts=[30,58]"])]
    cfgs += [tiny_config(tmp, t, ["heads=tasks", f"task={t}"] + (["age_head=years"] if t == "age" else []))
             for t in TASKS]
    data = load_data(tiny_data, tmp / "oof", k=2, seed=0)
    metas = train_runs(cfgs, data, tmp / "oof", echo=lambda s: None, progress=False)
    return tmp / "oof", data, {m["name"]: m for m in metas}


def test_a_task_head_run_records_both_age_cuts_and_task_accuracy_and_predicts_from_its_checkpoints(task_runs, tiny_data, tmp_path):
    oof_dir, data, metas = task_runs
    meta = json.loads((oof_dir / "years" / "run.json").read_text())
    assert meta["finished"] and meta["train_age_cuts"] == [30.0, 58.0] and meta["data"]["age_cuts"] == [30.0, 60.0]
    assert meta["config"]["heads"] == "tasks" and meta["config"]["age_head"] == "years"
    oof = pd.read_csv(oof_dir / "years" / "oof.csv")
    assert meta["oof_task_accuracy"] == task_accuracy(oof[PROB_COLS].to_numpy(), oof["label"].to_numpy())
    check_predict_reproduces_test_csv(oof_dir, "years", tiny_data / "eval" / "images", tmp_path / "probs.csv")


def test_kf_combine_joins_three_single_task_runs_into_a_run_that_kf_ensemble_and_kf_predict_read(task_runs, tiny_data):
    from kfold.runset import load_runs

    oof_dir, data, metas = task_runs
    args = ["combine", "--oof", str(oof_dir), "--mask", "mask", "--gender", "gender", "--age", "age", "--name", "combo"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "OOF macro F1" in res.output and "task accuracy mask" in res.output
    rs = load_runs(oof_dir, ["combo", "mask", "gender", "age", "years"])
    for split in ("oof", "test"):
        arr = getattr(rs, split)
        np.testing.assert_allclose(arr[0].sum(1), 1, atol=1e-5)
        for i in range(3):  # the combined run's task marginal is its member's
            np.testing.assert_allclose(task_marginals(arr[0])[i], task_marginals(arr[1 + i])[i], atol=2e-6)
    meta = json.loads((oof_dir / "combo" / "run.json").read_text())
    assert meta["combined_from"] == {"mask": "mask", "gender": "gender", "age": "age"} and meta["kind"] == "run"
    assert meta["folds_fingerprint"] == data.folds_meta["folds_fingerprint"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already holds a combined run; choose another --name or pass --overwrite" in again.output
    assert CliRunner().invoke(main, args + ["--overwrite"]).exit_code == 0
    clash = CliRunner().invoke(main, args[:-1] + ["years"])
    assert clash.exit_code == 2 and "a run that kf combine did not write" in clash.output
    ens = CliRunner().invoke(main, ["ensemble", "--oof", str(oof_dir), "--method", "soft", "--runs", "combo,years"])
    assert ens.exit_code == 0, ens.output
    out = oof_dir.parent / "combo_eval.csv"
    pred = CliRunner().invoke(main, ["predict", "combo", "--oof", str(oof_dir), "--images",
                                     str(tiny_data / "eval" / "images"), "--out", str(out)])
    assert pred.exit_code == 0, pred.output  # each member's fold models, multiplied: the combined test.csv
    got = pd.read_csv(out).set_index("ImageID")
    test = pd.read_csv(oof_dir / "combo" / "test.csv").set_index("ImageID")
    np.testing.assert_allclose(got.loc[test.index, PROB_COLS].to_numpy(), test[PROB_COLS].to_numpy(), atol=1e-5)
    tta = CliRunner().invoke(main, ["ensemble", "--data", str(tiny_data), "--oof", str(oof_dir), "--method", "soft",
                                    "--runs", "combo", "--tta", "d4"])
    assert tta.exit_code == 2 and "no checkpoints of its own; re-predict those runs" in tta.output


def test_a_single_task_run_picks_its_epoch_and_reports_folds_by_the_tasks_macro_f1(task_runs):
    oof_dir, data, metas = task_runs
    oof = pd.read_csv(oof_dir / "gender" / "oof.csv")
    g_true = L.decode(oof["label"].to_numpy())[1]
    g_pred = task_marginals(oof[PROB_COLS].to_numpy())[1].argmax(1)
    for f, r in metas["gender"]["folds"].items():
        rows = oof["fold"].to_numpy() == int(f)
        assert r["macro_f1"] == pytest.approx(metrics.macro_f1(g_true[rows], g_pred[rows], 2), abs=1e-12)
