"""Kill tests: SIGKILL `kf train` at several points, rerun, and get the uninterrupted result.

The process kills itself at a named point through ``KF_CRASH_AT`` (see
``kfold.io.crash_point``), which makes each point exact instead of a race
against a timer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfold.stagefiles import PROB_COLS

pytestmark = pytest.mark.trains

CONFIG = """model: test_efficientnet
pretrained: none
image_size: [32, 32]
epochs: 2
batch_size: 16
eval_batch_size: 64
tta: hflip
drop_rate: 0.2
seed: 3
"""


def kf_train(data: Path, oof: Path, config: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("KF_CRASH_AT", None)
    if crash_at:
        env["KF_CRASH_AT"] = crash_at
    # output to files, not pipes: a pipe would also wait for any process the killed one left behind
    oof.mkdir(parents=True, exist_ok=True)
    with open(oof / "stdout.txt", "w+") as out, open(oof / "stderr.txt", "w+") as err:
        rc = subprocess.run([sys.executable, "-m", "kf", "train", "--data", str(data), "--oof", str(oof), "--k", "2",
                             "--config", str(config), "--no-progress"], env=env, stdout=out, stderr=err, timeout=600).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([], rc, out.read(), err.read())


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    config = tmp / "tiny.yaml"
    config.write_text(CONFIG)
    res = kf_train(tiny_data, tmp / "ref", config)
    assert res.returncode == 0, res.stderr
    return tmp, config, tmp / "ref" / "tiny"


@pytest.mark.parametrize("point,fold0_done", [
    ("batch#6", False),             # mid-epoch: fold 0, epoch 2, after its first checkpoint
    ("write:last.pt#2", False),     # during the epoch-2 checkpoint save, before the rename
    ("fold-done#1", True),          # between fold 0 and fold 1
    ("write:oof.csv#3", True),      # while writing the run's oof.csv (after both folds' files)
])
def test_killed_training_resumes_to_the_uninterrupted_result_without_retraining_finished_folds(
        tiny_data, reference, point, fold0_done):
    tmp, config, ref_run = reference
    oof = tmp / point.replace(":", "_").replace("#", "_")
    killed = kf_train(tiny_data, oof, config, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = oof / "tiny"
    assert not (run / "oof.csv").exists()  # nothing half-written passes for a result
    assert (run / "fold0" / "result.json").exists() == fold0_done
    mtime = (run / "fold0" / "result.json").stat().st_mtime_ns if fold0_done else None

    rerun = kf_train(tiny_data, oof, config)
    assert rerun.returncode == 0, rerun.stderr
    if fold0_done:
        assert (run / "fold0" / "result.json").stat().st_mtime_ns == mtime
        assert "tiny fold 0: finished earlier" in rerun.stdout
    else:
        assert "resuming after epoch 1" in rerun.stdout
    got = pd.read_csv(run / "oof.csv")
    want = pd.read_csv(ref_run / "oof.csv")
    assert list(got["image"]) == list(want["image"])
    np.testing.assert_allclose(got[PROB_COLS].to_numpy(), want[PROB_COLS].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(pd.read_csv(run / "test.csv")[PROB_COLS].to_numpy(),
                               pd.read_csv(ref_run / "test.csv")[PROB_COLS].to_numpy(), atol=1e-6)
    leftovers = [p.name for p in run.rglob("*.tmp")]
    assert leftovers == []  # a killed writer's temporary (a whole .last.pt.*.tmp) is removed on resume


def test_same_seed_same_data_gives_the_same_oof_and_test_on_cpu(tiny_data, reference):
    tmp, config, ref_run = reference
    again = kf_train(tiny_data, tmp / "again", config)
    assert again.returncode == 0, again.stderr
    for name in ("oof.csv", "test.csv"):
        a = pd.read_csv(tmp / "again" / "tiny" / name)[PROB_COLS].to_numpy()
        b = pd.read_csv(ref_run / name)[PROB_COLS].to_numpy()
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert (tmp / "again" / "folds.csv").read_bytes() == (ref_run.parent / "folds.csv").read_bytes()
