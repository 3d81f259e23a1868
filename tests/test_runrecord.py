"""kfold.runrecord (the one owner of run.json: record, list, resolve), parameter-worded errors, pluggable scorers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble import CaruanaSelection, from_state, make_method, run_ensemble, to_state, tune_biases
from ensemble.methods import METHODS
from ensemble.selection import bootstrap_macro_f1, bootstrap_scores
from ensemble.synth import synthetic_labels, synthetic_probs, write_synthetic_runs
from kfold.io import KfError, ParamError, write_json
from kfold.metrics import accuracy, macro_f1
from kfold.options import flag_errors
from kfold.runrecord import (
    RunRecord,
    discover_runs,
    finished_names,
    list_sources,
    read_run_json,
    resolve_run_dir,
    resolve_test_csv,
    run_dirs,
    write_run_json,
)

#: a run.json as kf train writes it (keys in its order; numbers as JSON writes them)
TRAINED = """{
  "name": "lite0",
  "kind": "run",
  "config": {
    "model": "tf_efficientnet_lite0",
    "tta": "flip"
  },
  "data": {
    "root": "data",
    "age_cuts": [
      30.0,
      60.0
    ]
  },
  "folds_fingerprint": "abc123",
  "k": 5,
  "tta": "flip",
  "train_age_cuts": [
    30.0,
    60.0
  ],
  "versions": {
    "kf": "0.3.0"
  },
  "folds": {},
  "finished": false
}
"""


def test_record_round_trips_json_text_byte_for_byte_and_reads_its_fields():
    rec = RunRecord.from_json(TRAINED)
    assert rec.to_json() == TRAINED
    assert RunRecord.from_json(rec.to_json()) == rec
    assert (rec.name, rec.kind, rec.finished, rec.folds_fingerprint, rec.tta, rec.members, rec.source_run) == (
        "lite0", "run", False, "abc123", "flip", [], None)
    built = RunRecord.trained("lite0", {"model": "tf_efficientnet_lite0", "tta": "flip"},
                              {"root": "data", "age_cuts": [30.0, 60.0]}, "abc123", 5, "flip", [30.0, 60.0], {"kf": "0.3.0"})
    assert built.to_json() == TRAINED  # the constructor fixes kf train's key order
    assert RunRecord({"finished": 1}).finished is False and RunRecord({}).kind == "run"
    with pytest.raises(KfError, match=r"x/run.json: invalid JSON at line 1"):
        RunRecord.from_json("{", "x/run.json")
    with pytest.raises(KfError, match="expected a JSON object, found list"):
        RunRecord.from_json("[]")


def test_write_run_json_writes_the_bytes_of_the_old_writer(tmp_path):
    """The writers used kfold.io.write_json(dict, run_dir / "run.json"): the same bytes, numpy numbers included."""
    fields = {**json.loads(TRAINED), "oof_macro_f1": np.float64(0.5123456789), "k": np.int64(5), "finished": True}
    write_json(fields, tmp_path / "old.json")
    (tmp_path / "run").mkdir()
    path = write_run_json(RunRecord(fields), tmp_path / "run")
    assert path == tmp_path / "run" / "run.json"
    assert path.read_bytes() == (tmp_path / "old.json").read_bytes()
    write_run_json(fields, tmp_path / "run")  # a plain dict too
    assert path.read_bytes() == (tmp_path / "old.json").read_bytes()
    assert read_run_json(tmp_path / "run").to_dict() == json.loads((tmp_path / "old.json").read_text())


def test_constructors_keep_each_writers_key_order():
    rep = RunRecord.repredicted(RunRecord.from_json(TRAINED), "lite0@d4", "d4", 0.5)
    assert list(rep) == list(json.loads(TRAINED)) + ["source_run", "oof_macro_f1"]
    assert rep["config"]["tta"] == "d4" and rep.source_run == "lite0" and rep.finished
    ens = RunRecord.ensemble("ensemble/soft", "soft", False, ["a", "b"], "../soft.json", "fp", 5, {"a": "none"}, 0.4, 0.3, 0.2)
    assert list(ens) == ["name", "kind", "method", "bias", "members", "ensemble_json", "folds_fingerprint", "k", "tta",
                         "oof_macro_f1", "nested_macro_f1", "finished", "holdout_macro_f1"]
    best = RunRecord.best("ensemble/best", "a", "run", ["a"], "fp", 5, {}, 0.4, 0.4, 0.4, 0.01, "estimate", 0.4, "why")
    assert list(best)[-2:] == ["reason", "finished"] and "holdout_sd" not in best


@pytest.mark.trains
def test_a_trained_runs_run_json_is_rewritten_byte_identical(tiny_data, tmp_path):
    """kf train's run.json (written by kfold.runrecord.write_run_json) reads and writes back as is."""
    from click.testing import CliRunner

    from kf.cli import main

    (tmp_path / "tiny.yaml").write_text("name: tiny\n")
    sets = [a for v in ["model=test_efficientnet", "pretrained=none", "image_size=[32,32]", "epochs=1", "batch_size=16",
                        "tta=none"] for a in ("--set", v)]
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_data), "--oof", str(tmp_path / "oof"), "--k", "2",
                                    "--config", str(tmp_path / "tiny.yaml"), "--no-progress", *sets])
    assert res.exit_code == 0, res.output
    run = tmp_path / "oof" / "tiny"
    old = (run / "run.json").read_bytes()
    rec = read_run_json(run)
    assert rec.finished and rec.kind == "run" and rec.name == "tiny"
    (tmp_path / "copy").mkdir()
    assert write_run_json(rec, tmp_path / "copy").read_bytes() == old


@pytest.fixture
def oof(tmp_path):
    oof = tmp_path / "oof"
    write_synthetic_runs(oof, n_people=20, n_runs=2, k=3, n_test=14, seed=5)
    return oof


def test_listing_and_resolving_runs_and_ensembles(oof):
    (oof / "cache").mkdir()
    (oof / ".hidden").mkdir()
    write_run_json({"name": "x"}, oof / ".hidden")
    (oof / "half").mkdir()
    write_run_json({"name": "half", "finished": False}, oof / "half")
    (oof / "run0@d4").mkdir()
    write_run_json({"name": "run0@d4", "source_run": "run0", "finished": True}, oof / "run0@d4")
    assert [d.name for d in run_dirs(oof)] == ["half", "run0", "run0@d4", "run1"]
    assert discover_runs(oof) == (["run0", "run1"], ["half"])  # re-predictions are named, not discovered
    run_ensemble(oof, "soft")
    assert finished_names(oof) == ["run0", "run0@d4", "run1", "ensemble/best", "ensemble/soft"]
    assert resolve_run_dir("run1", oof) == oof / "run1"
    assert resolve_run_dir("ensemble/soft", oof) == oof / "ensemble" / "soft"
    assert resolve_run_dir(str(oof / "run0"), "elsewhere") == oof / "run0"
    with pytest.raises(KfError, match=r"^nope: not a run or ensemble under .*finished there: run0, run0@d4, run1, "
                                      r"ensemble/best, ensemble/soft\)$"):
        resolve_run_dir("nope", oof)
    assert list_sources(oof) == ["run0", "run1", "ensemble/best", "ensemble/soft"]
    assert resolve_test_csv("ensemble/best", oof) == oof / "ensemble" / "best" / "test.csv"
    with pytest.raises(ParamError) as e:
        resolve_test_csv("zzz", oof)
    assert str(e.value).startswith("source zzz: ") and "available in" in str(e.value)
    with pytest.raises(KfError, match=r"^--from zzz: .*not found \(available in .*: run0, run1, ensemble/best"):
        with flag_errors(source="--from", oof_dir="--oof"):
            resolve_test_csv("zzz", oof)
    with pytest.raises(ParamError, match=r"nowhere: folder not found \(pass oof_dir, "):
        discover_runs(oof / "nowhere")


def test_library_errors_name_parameters_and_the_cli_layer_names_flags():
    with pytest.raises(ParamError, match=rf"^method 'x': unknown, expected one of {', '.join(METHODS)}$"):
        make_method("x")
    with pytest.raises(KfError, match=r"^--method 'x': unknown"):
        with flag_errors(method="--method"):
            make_method("x")
    e = ParamError("pass {name} to keep both, or {overwrite} to replace it", "name", "overwrite")
    assert str(e) == "pass name to keep both, or overwrite to replace it"
    assert e.render({"name": "--name"}) == "pass --name to keep both, or overwrite to replace it"


def test_a_custom_scorer_matches_the_vectorised_default_and_is_recorded():
    labels = synthetic_labels(30, k=3, seed=1)
    y, groups = labels["label"].to_numpy(), labels["person"].to_numpy()
    P = synthetic_probs(y, 3, [1.5, 2.0, 2.5], seed=2)

    def slow_f1(a, b):
        return macro_f1(a, b)

    assert np.allclose(CaruanaSelection(scorer=slow_f1).fit(P, y).weights_, CaruanaSelection().fit(P, y).weights_)
    logp = np.log(P[0])
    b_fast, s_fast = tune_biases(logp, y, n_passes=1)
    b_slow, s_slow = tune_biases(logp, y, n_passes=1, scorer=slow_f1)
    assert np.allclose(b_fast, b_slow) and s_fast == pytest.approx(s_slow)
    preds = P.argmax(axis=2)
    assert np.allclose(bootstrap_scores(y, preds, groups, 20, scorer=slow_f1), bootstrap_macro_f1(y, preds, groups, 20))
    acc = CaruanaSelection(n_iterations=5, scorer=accuracy).fit(P, y)
    assert acc.trajectory_.max() == pytest.approx(accuracy(y, acc.predict_proba(P).argmax(1)))  # scored by accuracy
    state = to_state(acc)
    assert state["params"] == {"n_iterations": 5, "scorer": "kfold.metrics:accuracy"}
    assert from_state(state).scorer is accuracy
    assert to_state(CaruanaSelection().fit(P, y))["params"] == {"n_iterations": 25}  # the default is not recorded
