"""Scale-out under faults: `kf train --executor ray` on a Ray cluster of several nodes on this machine.

The cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``): a head
with no CPUs (so no task runs there) and worker nodes with one CPU each, added
and removed per test. Every node is a real raylet, so removing one kills its
workers and Ray reports the node dead, as for a preempted machine. Faults come
at exact points through ``kfold.io.crash_point``: a node's workers inherit
``KF_CRASH_AT`` (where), ``KF_CRASH_ONCE`` (only the first worker to get there)
and ``KF_CRASH_MODE=pause`` (wait there, so the test can remove the node).
``kf train`` runs as a separate driver process, as a user runs it, and its
output is what the tests read. Runs pin ``threads: 1``, so every fold computes
the same numbers in a Ray worker as in the local reference run.

Run these alone with ``pytest -m ray_cluster``; they need Ray (skipped without).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kfold.io import KfError
from kfold.ray_nodes import _fits, _sees_storage, node_wait_s
from kfold.stagefiles import PROB_COLS

pytestmark = pytest.mark.ray_cluster

K = 3
RUNS = {"a": {"seed": 7, "lr": 0.003}, "b": {"seed": 8, "lr": 0.001}}
TINY = {"model": "test_efficientnet", "pretrained": "none", "image_size": [32, 32], "epochs": 2, "batch_size": 16,
        "tta": "hflip", "eval_batch_size": 64, "augment": {"affine": 0}, "device": "cpu", "threads": 1}
CRASH_VARS = ("KF_CRASH_AT", "KF_CRASH_ONCE", "KF_CRASH_MODE")
# Ray's head declares a node dead after 3 missed health checks 0.5 s apart (the defaults take about 15 s)
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}


def started(start, tries: int = 3):
    """``start()``, tried again where a node timed out during startup: Ray gives a node's raylet 30 s (hard-coded)
    to start its agents, Python processes that can take longer on a loaded machine."""
    for attempt in range(tries):
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == tries - 1:
                raise


@pytest.fixture(scope="module")
def cluster():
    """A Ray test cluster: its head only, with no CPUs; tests add and remove worker nodes."""
    pytest.importorskip("ray", reason="Ray is not installed; pip install -e '.[ray]' to test --executor ray")
    from ray.cluster_utils import Cluster

    c = started(lambda: Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS}))
    yield c
    c.shutdown()


@contextmanager
def nodes(cluster, n: int, **env: str):
    """``n`` worker nodes of one CPU each whose workers see the environment ``env``; removed at the end."""
    added = [started(lambda: cluster.add_node(num_cpus=1, env_vars=dict(env))) for _ in range(n)]
    try:
        yield added
    finally:
        for node in added:
            if node in cluster.worker_nodes:
                cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    for name, extra in RUNS.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, **extra}))
    return {name: folder / f"{name}.yaml" for name in RUNS}


def kf_train(data: Path, oof: Path, configs: list[Path], *extra: str, env: dict | None = None,
             wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """`kf train` in a fresh process, output to ``oof/../<oof name>.out``; the driver never sees KF_CRASH_*."""
    env = {**{k: v for k, v in os.environ.items() if k not in CRASH_VARS}, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    args = [sys.executable, "-m", "kf", "train", "--data", str(data), "--oof", str(oof), "--k", str(K),
            "--no-progress", *extra]
    for c in configs:
        args += ["--config", str(c)]
    out = oof.parent / f"{oof.name}.out"
    with open(out, "w") as fh:  # a file, not a pipe: killed Ray workers must not hold the test's pipe open
        proc = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT)
    proc.out = out
    return finish(proc) if wait else proc


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    rc = proc.wait(timeout=900)
    return subprocess.CompletedProcess(proc.args, rc, proc.out.read_text())


def on_ray(cluster) -> list[str]:
    return ["--executor", "ray", "--address", cluster.address]


@pytest.fixture(scope="module")
def reference(tiny_data, configs, tmp_path_factory) -> Path:
    """Both runs by the local executor, uninterrupted: the OOF every test must reproduce."""
    oof = tmp_path_factory.mktemp("reference") / "oof"
    res = kf_train(tiny_data, oof, list(configs.values()))
    assert res.returncode == 0, res.stdout
    return oof


def assert_same_predictions(oof: Path, reference: Path, runs) -> None:
    for run in runs:
        for name in ("oof.csv", "test.csv"):
            got, want = pd.read_csv(oof / run / name), pd.read_csv(reference / run / name)
            assert list(got.iloc[:, 0]) == list(want.iloc[:, 0])
            np.testing.assert_allclose(got[PROB_COLS].to_numpy(), want[PROB_COLS].to_numpy(), atol=1e-6)


def epoch2_batch(reference: Path) -> int:
    """A batch count that falls in epoch 2 of every fold (a worker's first fold): last.pt of epoch 1 exists there."""
    folds = pd.read_csv(reference / "folds.csv")
    per_epoch = []
    for f in range(K):
        n = int((folds["fold"] != f).sum())
        bs = min(TINY["batch_size"], n)
        per_epoch.append(n // bs if n > bs else 1)  # the training loader drops the last partial batch
    nth = max(per_epoch) + 2
    assert nth <= 2 * min(per_epoch), per_epoch
    return nth


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 900) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.out.read_text()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.1)


def task_lines(output: str, run: str, fold: int) -> list[str]:
    """The log lines a finished task sent back, after its `ray: <run> fold <k> ran on node ...` line."""
    lines = output.splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith(f"ray: {run} fold {fold} ran on node "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("ray: ")), len(lines))
    return lines[start:end]


def assert_quiet(output: str) -> None:
    """No Ray tracebacks or `(raylet)` error screens: only kf's lines."""
    assert "Traceback" not in output and "(raylet)" not in output and "WorkerCrashedError" not in output, output


def short(node) -> str:
    return node.node_id[:8]


def test_a_node_sees_the_drivers_marker_and_the_data_or_says_why(tmp_path):
    marker = tmp_path / ".kf-storage-check"
    marker.write_text("token")
    assert _sees_storage(str(marker), "token", str(tmp_path)) is None
    assert _sees_storage(str(marker), "other", str(tmp_path)) == f"{tmp_path} is another folder there (its .kf-storage-check holds other text)"
    # a kfold.io.ParamError template: check_shared_storage raises it naming data_root (kf train: --data)
    assert _sees_storage(str(marker), "token", str(tmp_path / "data")) == f"{{data_root}} {tmp_path / 'data'}: no such folder"
    why = _sees_storage(str(tmp_path / "gone"), "token", str(tmp_path))
    assert why.startswith(f"cannot read {tmp_path / 'gone'}, which kf train just wrote there")


def test_a_task_waits_for_a_node_only_where_no_alive_node_has_its_resources(monkeypatch):
    cpu2, gpu = {"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}
    assert _fits({"num_cpus": 2}, [cpu2]) and not _fits({"num_cpus": 4}, [cpu2])
    assert not _fits({"num_cpus": 2}, [{**cpu2, "Alive": False}])  # a lost node runs nothing
    assert _fits({"num_gpus": 1, "num_cpus": 8}, [cpu2, gpu]) and not _fits({"num_gpus": 1, "num_cpus": 8}, [cpu2])
    monkeypatch.setenv("KF_RAY_NODE_WAIT", "2.5")
    assert node_wait_s() == 2.5
    monkeypatch.setenv("KF_RAY_NODE_WAIT", "-1")
    with pytest.raises(KfError, match=r"^KF_RAY_NODE_WAIT='-1': give seconds, a number >= 0$"):
        node_wait_s()


def test_two_nodes_share_the_folds_and_write_the_local_executors_oof(cluster, tiny_data, configs, reference, tmp_path):
    oof = tmp_path / "oof"
    with nodes(cluster, 2) as (a, b):
        res = kf_train(tiny_data, oof, list(configs.values()), *on_ray(cluster))
    assert res.returncode == 0, res.stdout
    assert "ray: 6 fold task(s) on 3 node(s) (2 CPUs, 0 GPUs; 2 checked to see --oof and --data)" in res.stdout
    ran = re.findall(r"^ray: (\w+) fold (\d) ran on node (\w{8}) ", res.stdout, re.M)
    assert sorted((run, int(f)) for run, f, _ in ran) == [(r, f) for r in RUNS for f in range(K)]
    assert {node for _, _, node in ran} == {short(a), short(b)}  # both nodes trained folds
    assert " lost on " not in res.stdout
    assert_quiet(res.stdout)
    assert_same_predictions(oof, reference, RUNS)


def test_a_node_removed_mid_fold_resumes_that_fold_on_another_node_after_its_last_epoch(
        cluster, tiny_data, configs, reference, tmp_path):
    oof, paused = tmp_path / "oof", tmp_path / "paused"
    # one node; its first fold pauses in epoch 2 (epoch 1's last.pt written)
    with nodes(cluster, 1, KF_CRASH_AT=f"batch#{epoch2_batch(reference)}", KF_CRASH_ONCE=str(paused),
               KF_CRASH_MODE="pause") as [a]:
        proc = kf_train(tiny_data, oof, [configs["a"]], *on_ray(cluster), wait=False)
        wait_for(paused, proc)
        [fold] = [f for f in range(K) if (oof / "a" / f"fold{f}" / "last.pt").exists()]
        with nodes(cluster, 1) as [b]:
            cluster.remove_node(a, allow_graceful=False)  # a machine lost: raylet and workers SIGKILLed
            res = finish(proc)
    assert res.returncode == 0, res.stdout
    out = res.stdout
    assert f"ray: a fold {fold} attempt 1 lost on node {short(a)} (" in out
    assert re.search(rf"^ray: a fold {fold} attempt 1 lost on node {short(a)} \(.*\): its node died .*; "
                     r"retry 1 of 2 resumes from its last finished epoch$", out, re.M), out
    assert re.search(rf"^ray: a fold {fold} attempt 2 started on node {short(b)} ", out, re.M), out
    log = task_lines(out, "a", fold)
    assert log[0].startswith(f"ray: a fold {fold} ran on node {short(b)} (") and log[0].endswith(", attempt 2")
    assert f"  fold {fold}: resuming after epoch 1 " in "\n".join(log)
    assert not any(f"a fold {fold} epoch 1/2" in s for s in log)  # epoch 1 was not trained again
    assert any(f"a fold {fold} epoch 2/2" in s for s in log)
    assert len(re.findall(" lost on ", out)) == 1
    assert_quiet(out)
    assert_same_predictions(oof, reference, ["a"])


def test_a_worker_killed_mid_epoch_is_retried_and_resumes(cluster, tiny_data, configs, reference, tmp_path):
    oof, killed = tmp_path / "oof", tmp_path / "killed"
    with nodes(cluster, 1, KF_CRASH_AT=f"batch#{epoch2_batch(reference)}", KF_CRASH_ONCE=str(killed)):
        res = kf_train(tiny_data, oof, [configs["b"]], *on_ray(cluster))
    assert res.returncode == 0, res.stdout
    assert killed.exists()  # a worker did SIGKILL itself
    [(fold, node)] = re.findall(r"^ray: b fold (\d) attempt 1 lost on node (\w{8}) \(.*\): its worker process died",
                                res.stdout, re.M)
    assert re.search(rf"^ray: b fold {fold} attempt 2 started on node \w{{8}} ", res.stdout, re.M), res.stdout
    log = "\n".join(task_lines(res.stdout, "b", int(fold)))
    assert f"  fold {fold}: resuming after epoch 1 " in log and f"b fold {fold} epoch 1/2" not in log
    assert_quiet(res.stdout)
    assert_same_predictions(oof, reference, ["b"])


def test_all_nodes_lost_names_the_unfinished_folds_in_one_line_and_a_rerun_finishes_them(
        cluster, tiny_data, configs, reference, tmp_path):
    oof, paused = tmp_path / "oof", tmp_path / "paused"
    # two nodes; the first fold to finish pauses after writing its result, then both nodes go
    with nodes(cluster, 2, KF_CRASH_AT="fold-done", KF_CRASH_ONCE=str(paused), KF_CRASH_MODE="pause") as both:
        proc = kf_train(tiny_data, oof, [configs["a"]], *on_ray(cluster), env={"KF_RAY_NODE_WAIT": "2"}, wait=False)
        wait_for(paused, proc)
        for node in both:
            cluster.remove_node(node, allow_graceful=False)
        res = finish(proc)
    assert res.returncode == 2, res.stdout
    finished = [f for f in range(K) if (oof / "a" / f"fold{f}" / "result.json").exists()]
    unfinished = [f for f in range(K) if f not in finished]
    assert finished and unfinished
    errors = [s for s in res.stdout.splitlines() if s.startswith("error: ")]
    assert errors == [f"error: {', '.join(f'a fold {f}' for f in unfinished)} did not finish: no alive Ray node "
                      f"could run {'them' if len(unfinished) > 1 else 'it'} (waited 2 s); finished folds are kept: "
                      "rerun the same kf train command once nodes are back (or with --executor local) and "
                      f"{'these folds resume' if len(unfinished) > 1 else 'it resumes'} from the last finished epoch"]
    assert_quiet(res.stdout)
    kept = {f: (oof / "a" / f"fold{f}" / "result.json").stat().st_mtime_ns for f in finished}

    again = kf_train(tiny_data, oof, [configs["a"]])  # the local executor: what the line offers without a cluster
    assert again.returncode == 0, again.stdout
    for f in finished:
        assert f"  a fold {f}: finished earlier" in again.stdout
        assert (oof / "a" / f"fold{f}" / "result.json").stat().st_mtime_ns == kept[f]
    assert_same_predictions(oof, reference, ["a"])
