"""kf train --executor ray: the local executor's files, skipped finished folds, bounded retries, one-line errors.

Two tiny runs (test_efficientnet at 32x32, 1 epoch, 2 folds) are trained once
by ``kf train`` in a fresh local process and once as Ray tasks on a
module-wide local Ray instance (2 CPUs, no dashboard). Both pin
``device: cpu`` and ``threads: 2`` (``KF_THREADS`` when set: CI's rerun
compares them at one thread), so every process computes with the same torch
settings whatever this machine's core count. The Ray tests are skipped when
Ray is not installed; the others run without it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kf.cli import main
from kfold.config import load_config
from kfold.data import load_data
from kfold.device import forced_threads
from kfold.io import KfError
from kfold.ray_nodes import task_resources
from kfold.stagefiles import PROB_COLS
from kfold.train import run_on_ray

RUNS = {"a": {"seed": 7, "lr": 0.003}, "b": {"seed": 8, "lr": 0.001}}
THREADS = forced_threads() or 2
TINY = {"model": "test_efficientnet", "pretrained": "none", "image_size": [32, 32], "epochs": 1, "batch_size": 16,
        "tta": "hflip", "eval_batch_size": 64, "augment": {"affine": 0}, "device": "cpu", "threads": THREADS}
NO_RAY = "ray not imported"

# Runs `kf train` ARGS in a fresh process (the local executor), after `kf train --help`, and says whether
# either imported ray.
LOCAL_KF_TRAIN = f"""
import sys
from click.testing import CliRunner
from kf.cli import main
assert CliRunner().invoke(main, ["train", "--help"]).exit_code == 0
help_ok = "ray" not in sys.modules
res = CliRunner().invoke(main, sys.argv[1:])
print(res.output)
print("help: " + ({NO_RAY!r} if help_ok else "ray imported"))
print("train: " + ({NO_RAY!r} if "ray" not in sys.modules else "ray imported"))
sys.exit(res.exit_code)
"""


def write_configs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, extra in RUNS.items():
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump({**TINY, **extra}))
    return paths


def train_args(data: Path, oof: Path, configs: list[Path], *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--oof", str(oof), "--k", "2", "--no-progress", *extra]
    for c in configs:
        args += ["--config", str(c)]
    return args


def summary_rows(output: str) -> list[str]:
    """The summary table's rows without the minutes column."""
    lines = output.splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("run ") and "OOF macro F1" in s)
    return [s.rsplit(None, 1)[0] for s in lines[start + 1:start + 1 + len(RUNS)]]


@pytest.fixture(scope="module")
def local(tiny_data, tmp_path_factory):
    """The local executor's outputs, from `kf train` in a fresh process; its output text."""
    tmp = tmp_path_factory.mktemp("local")
    configs = write_configs(tmp / "configs")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", LOCAL_KF_TRAIN, *train_args(tiny_data, tmp / "oof", configs)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"local kf train: {time.time() - t0:.1f} s")
    return tmp / "oof", res.stdout, configs


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="Ray is not installed; pip install -e '.[ray]' to test --executor ray")
    import ray.cloudpickle  # noqa: F811  (loads the submodule)

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FlakyThreads travels to the workers
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def on_ray(ray_instance, tiny_data, local, tmp_path_factory):
    """The same two runs as `local`, by `kf train --executor ray` on the module's Ray instance."""
    tmp = tmp_path_factory.mktemp("ray")
    _, _, configs = local
    t0 = time.time()
    res = CliRunner().invoke(main, train_args(tiny_data, tmp / "oof", configs, "--executor", "ray"))
    assert res.exit_code == 0, res.output
    print(f"ray kf train: {time.time() - t0:.1f} s")
    return tmp / "oof", res.output, configs


# -- without Ray ----------------------------------------------------------------------------------
def test_kf_train_executor_ray_without_ray_installed_is_a_one_line_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    configs = write_configs(tmp_path / "configs")
    res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs, "--executor", "ray"))
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --executor ray: Ray is not installed; pip install -e '.[ray]' (or use --executor local)"]
    assert not (tmp_path / "oof" / "a").exists()  # nothing written before the check


@pytest.mark.trains
def test_kf_train_help_and_local_training_never_import_ray(local):
    _, output, _ = local
    assert "help: ray not imported" in output
    assert "train: ray not imported" in output


def test_ray_tasks_ask_for_one_gpu_where_the_cluster_has_gpus_else_a_whole_node_of_cpus():
    cpu_head = {"Alive": True, "Resources": {"CPU": 0.0, "memory": 1e9}}
    cpu8 = {"Alive": True, "Resources": {"CPU": 8.0}}
    cpu32 = {"Alive": True, "Resources": {"CPU": 32.0}}
    gpu4 = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}}
    gpu1 = {"Alive": True, "Resources": {"CPU": 12.0, "GPU": 1.0}}
    dead = {"Alive": False, "Resources": {"CPU": 2.0}}
    assert task_resources([cpu_head, cpu8, cpu32, dead]) == {"num_cpus": 8}
    assert task_resources([cpu8, cpu32], cpus_per_task=4) == {"num_cpus": 4}
    assert task_resources([cpu8, gpu4, gpu1]) == {"num_gpus": 1, "num_cpus": 4}
    assert task_resources([cpu8, gpu4], device="cpu") == {"num_cpus": 8}
    with pytest.raises(KfError, match="no node with a CPU"):
        task_resources([cpu_head, dead])


# -- with Ray -------------------------------------------------------------------------------------
@pytest.mark.trains
def test_ray_run_writes_the_local_executors_oof_and_test_files_and_summary(local, on_ray):
    local_oof, local_out, _ = local
    ray_oof, ray_out, _ = on_ray
    for run in RUNS:
        for name, front in (("oof.csv", ["image", "person", "fold", "label"]), ("test.csv", ["ImageID"])):
            a = pd.read_csv(local_oof / run / name, dtype={"person": str})
            b = pd.read_csv(ray_oof / run / name, dtype={"person": str})
            assert list(a.columns) == list(b.columns) == front + PROB_COLS
            pd.testing.assert_frame_equal(a[front], b[front])
            np.testing.assert_allclose(b[PROB_COLS].to_numpy(), a[PROB_COLS].to_numpy(), rtol=0, atol=1e-6)
        a, b = (json.loads((d / run / "run.json").read_text()) for d in (local_oof, ray_oof))
        assert b["finished"] is True and b["oof_macro_f1"] == a["oof_macro_f1"]
        assert {f: r["macro_f1"] for f, r in b["folds"].items()} == {f: r["macro_f1"] for f, r in a["folds"].items()}
    assert summary_rows(ray_out) == summary_rows(local_out)
    assert re.search(r"ray: 4 fold task\(s\) on 1 node\(s\) \(2 CPUs, 0 GPUs; 1 checked to see --oof and --data\); "
                     r"each asks for 2 CPUs; up to 2 retries", ray_out), ray_out
    assert ray_out.count(f"{THREADS} threads") == 4  # each task's log line came back to the driver


@pytest.mark.trains
def test_ray_rerun_skips_finished_folds_without_retraining(on_ray, tiny_data):
    ray_oof, _, configs = on_ray
    results = sorted(ray_oof.glob("*/fold*/result.json"))
    assert len(results) == 4
    before = [p.stat().st_mtime_ns for p in results] + [(ray_oof / r / "fold0" / "best.pt").stat().st_mtime_ns for r in RUNS]
    res = CliRunner().invoke(main, train_args(tiny_data, ray_oof, configs, "--executor", "ray"))
    assert res.exit_code == 0, res.output
    assert res.output.count("finished earlier") == 4 and "OOF macro F1" in res.output
    assert [p.stat().st_mtime_ns for p in results] + [(ray_oof / r / "fold0" / "best.pt").stat().st_mtime_ns
                                                       for r in RUNS] == before


class FlakyThreads:
    """A ``threads`` setting whose ``int()`` raises ``error`` the first ``fails`` times; attempts are lines of ``log``."""

    def __init__(self, log: Path, fails: int, error: type[Exception]):
        self.log, self.fails, self.error = str(log), fails, error

    def __int__(self) -> int:
        with open(self.log, "a") as fh:
            fh.write("attempt\n")
        n = len(Path(self.log).read_text().splitlines())
        if n <= self.fails:
            raise self.error(f"attempt {n} failed")
        return THREADS


def flaky_job(on_ray, tmp_path: Path, fails: int, error: type[Exception]):
    """Fold 0 of run ``a`` (finished: a successful attempt just skips it) with a FlakyThreads setting."""
    ray_oof, _, configs = on_ray
    cfg = load_config(configs[0])
    cfg.threads = FlakyThreads(tmp_path / "attempts.txt", fails, error)
    return [(cfg, 0, ray_oof / "a")]


def attempts(tmp_path: Path) -> int:
    return len((tmp_path / "attempts.txt").read_text().splitlines())


@pytest.mark.trains
def test_a_task_that_fails_once_is_retried_and_succeeds(on_ray, tiny_data, tmp_path):
    jobs = flaky_job(on_ray, tmp_path, fails=1, error=RuntimeError)
    data = load_data(tiny_data, on_ray[0], k=2)
    [r] = run_on_ray(jobs, data, on_ray[0], echo=lambda s: None)
    assert r["skipped"] is True and attempts(tmp_path) == 2


@pytest.mark.trains
@pytest.mark.parametrize("error, message, tries", [
    (RuntimeError, "a fold 0 failed after 2 retries: RuntimeError: attempt 3 failed", 3),  # retried twice
    (KfError, "a fold 0: attempt 1 failed", 1),  # bad input: one line, no retries
])
def test_a_task_that_keeps_failing_surfaces_as_one_line_kferror(error, message, tries, on_ray, tiny_data, tmp_path):
    jobs = flaky_job(on_ray, tmp_path, fails=99, error=error)
    data = load_data(tiny_data, on_ray[0], k=2)
    with pytest.raises(KfError) as e:
        run_on_ray(jobs, data, on_ray[0], echo=lambda s: None)
    assert str(e.value) == message
    assert attempts(tmp_path) == tries


def test_ray_trains_a_multi_head_age_years_run_like_the_local_executor(ray_instance, tiny_data, tmp_path):
    """Task heads travel to Ray workers (config keys, ages in the DataBundle) and give the local executor's OOF."""
    config = tmp_path / "heads.yaml"
    config.write_text(yaml.safe_dump({**TINY, "heads": "tasks", "age_head": "years", "train_age_cuts": [30, 58],
                                      "task_weights": {"mask": 1, "gender": 1, "age": 2}}))
    cfg = load_config(config)
    from kfold.train import train_runs

    local_meta = train_runs([cfg], load_data(tiny_data, tmp_path / "local", k=2), tmp_path / "local",
                            echo=lambda s: None, progress=False)[0]
    res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "ray", [config], "--executor", "ray"))
    assert res.exit_code == 0, res.output
    ray_meta = json.loads((tmp_path / "ray" / "heads" / "run.json").read_text())
    assert ray_meta["finished"] and ray_meta["train_age_cuts"] == [30.0, 58.0]
    assert ray_meta["oof_task_accuracy"] == local_meta["oof_task_accuracy"]
    a = pd.read_csv(tmp_path / "local" / "heads" / "oof.csv")[PROB_COLS].to_numpy()
    b = pd.read_csv(tmp_path / "ray" / "heads" / "oof.csv")[PROB_COLS].to_numpy()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
