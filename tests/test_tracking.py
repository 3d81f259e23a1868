"""kf --track: MLflow runs for every run, fold, ensemble and submission; resume without duplicates; never fatal.

Every test runs twice: against a real ``mlflow server`` (a session fixture on a
free localhost port with a temporary SQLite backend and artifact folder;
marked ``tracking_server``, select with ``-m tracking_server``) and against
MLflow's local default (no server: a SQLite file in a temporary folder,
``MLFLOW_TRACKING_URI`` set so nothing is written in the repository). Each
test logs to its own experiment (``MLFLOW_EXPERIMENT_NAME``) and reads back
through ``MlflowClient``. Skipped when MLflow is not installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kf.cli import main
from kfold import tracking

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed; pip install -e '.[track]' to test tracking")
from mlflow import MlflowClient  # noqa: E402

TINY = {"model": "test_efficientnet", "pretrained": "none", "image_size": [32, 32], "epochs": 2, "batch_size": 16,
        "tta": "hflip", "eval_batch_size": 64, "augment": {"affine": 0}, "seed": 3,
        "threads": 1}  # one thread: fast enough, and no spinning OpenMP threads on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free port with a SQLite backend and an artifact folder under ``folder``; waits until healthy."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: starts faster
    with open(folder / "server.log", "w") as logf:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                                 f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=folder, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600  # a loaded 2-core machine needs a minute or more to import and migrate
    while not healthy(uri):
        if proc.poll() is not None or time.time() > deadline:
            stop_server(proc)
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return proc, uri


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and the uvicorn process it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # any child left behind
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    proc, uri = start_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_server(proc)


@pytest.fixture(scope="module", params=["local", pytest.param("server", marks=pytest.mark.tracking_server)])
def backend(request, tmp_path_factory) -> str:
    """The tracking URI: MLflow's local default (a SQLite file, no server) or a real server."""
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-local') / 'mlflow.db'}"


def use(mp: pytest.MonkeyPatch, uri: str, experiment: str, cwd: Path) -> MlflowClient:
    """Point MLflow (and kf) at ``uri`` / ``experiment``; work in ``cwd`` (a local store's artifacts go to ./mlruns)."""
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    mp.delenv("KF_TRACK", raising=False)
    mp.chdir(cwd)
    tracking.reset()
    return MlflowClient(uri)


def write_configs(folder: Path, **extra) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, seed in (("a", 3), ("b", 4)):
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump({**TINY, "seed": seed, **extra}))
    return paths


def train_args(data, oof, configs, *extra) -> list[str]:
    args = ["train", "--data", str(data), "--oof", str(oof), "--k", "2", "--no-progress", *extra]
    for c in configs:
        args += ["--config", str(c)]
    return args


def runs_of(client: MlflowClient, experiment: str, kind: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`kf.kind` = '{kind}'", max_results=1000) if exp else []


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def steps(client: MlflowClient, run_id: str, key: str = "val_macro_f1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# -- the main job: train -> ensemble -> submit ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def main_job(backend, tiny_data, tmp_path_factory):
    """Two tiny runs (2 folds, 2 epochs) trained with --track, blended (soft voting) and submitted."""
    tmp = tmp_path_factory.mktemp("main-job")
    oof = tmp / "oof"
    with pytest.MonkeyPatch.context() as mp:
        client = use(mp, backend, "main-job", tmp)
        cli = CliRunner()
        res = cli.invoke(main, train_args(tiny_data, oof, write_configs(tmp / "configs"), "--track"))
        assert res.exit_code == 0, res.output
        res = cli.invoke(main, ["ensemble", "--data", str(tiny_data), "--oof", str(oof), "--method", "soft", "--track"])
        assert res.exit_code == 0, res.output
        res = cli.invoke(main, ["submit", "--data", str(tiny_data), "--oof", str(oof), "--from", "ensemble/best",
                                "--out", str(tmp / "sub.csv"), "--track"])
        assert res.exit_code == 0, res.output
        assert "warning" not in res.output
    return client, oof, tmp / "sub.csv"


def test_a_parent_run_per_kf_run_with_config_params_folds_and_oof_metrics(main_job):
    client, oof, _ = main_job
    parents = {r.data.tags["kf.run_name"]: r for r in runs_of(client, "main-job", "run")}
    assert sorted(parents) == ["a", "b"]
    for name, run in parents.items():
        meta = json.loads((oof / name / "run.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.params["model"] == "test_efficientnet" and run.data.params["seed"] == str(meta["config"]["seed"])
        assert run.data.params["augment.affine"] == "0.0" and run.data.params["k"] == "2"
        assert run.data.tags["kf.folds_fingerprint"] == meta["folds_fingerprint"]
        assert run.data.tags["kf.version.torch"] == meta["versions"]["torch"]
        assert run.data.metrics["oof_macro_f1"] == pytest.approx(meta["oof_macro_f1"], abs=1e-12)
        assert run.data.metrics["oof_accuracy"] == pytest.approx(meta["oof_accuracy"], abs=1e-12)
        for task in ("mask", "gender", "age"):
            assert 0 <= run.data.metrics[f"{task}_accuracy"] <= 1
        assert run.data.metrics["mask_accuracy"] >= meta["oof_accuracy"]  # a right class has a right mask
        assert {"config.yaml", "run.json"} <= artifacts(client, run.info.run_id)


def test_one_child_per_fold_with_per_epoch_metrics_best_epoch_and_result(main_job):
    client, oof, _ = main_job
    parents = {r.info.run_id: r.data.tags["kf.run_name"] for r in runs_of(client, "main-job", "run")}
    folds = runs_of(client, "main-job", "fold")
    assert sorted((parents[r.data.tags["mlflow.parentRunId"]], r.data.tags["kf.fold"]) for r in folds) == [
        ("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    for r in folds:
        fold_dir = oof / parents[r.data.tags["mlflow.parentRunId"]] / f"fold{r.data.tags['kf.fold']}"
        log = pd.read_csv(fold_dir / "log.csv")
        result = json.loads((fold_dir / "result.json").read_text())
        assert r.info.status == "FINISHED"
        for key in ("train_loss", "val_loss", "val_macro_f1", "lr", "images_per_s"):
            hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in hist] == [1, 2]
            np.testing.assert_allclose([m.value for m in hist], log[key].to_numpy(), rtol=1e-6)
        assert r.data.tags["kf.best_epoch"] == str(result["best_epoch"])
        assert r.data.metrics["oof_macro_f1"] == pytest.approx(result["macro_f1"], abs=1e-12)
        assert {"result.json", "log.csv"} <= artifacts(client, r.info.run_id)


def test_ensemble_run_links_its_members_and_submit_run_links_its_source(main_job):
    client, oof, sub = main_job
    parents = {r.data.tags["kf.run_name"]: r.info.run_id for r in runs_of(client, "main-job", "run")}
    (ens,) = runs_of(client, "main-job", "ensemble")
    assert ens.data.tags["kf.members"] == "a,b"
    assert ens.data.tags["kf.member.a"] == parents["a"] and ens.data.tags["kf.member.b"] == parents["b"]
    scores = pd.read_csv(oof / "ensemble" / "soft_scores.csv")
    chosen = scores.loc[scores["nested_macro_f1"].idxmax()]
    assert ens.data.tags["kf.chosen"] == chosen["name"]
    assert ens.data.metrics["nested_macro_f1"] == pytest.approx(chosen["nested_macro_f1"], abs=1e-6)  # the csv's precision
    assert "soft_scores.csv" in artifacts(client, ens.info.run_id)
    (s,) = runs_of(client, "main-job", "submit")
    assert s.data.tags["kf.source_run_id"] == ens.info.run_id
    assert s.data.tags["kf.sha256"] == hashlib.sha256(sub.read_bytes()).hexdigest()
    counts = pd.read_csv(sub)["ans"].value_counts()
    for c in range(18):
        assert s.data.metrics[f"share_{c:02d}"] == pytest.approx(counts.get(c, 0) / counts.sum(), abs=1e-12)
    assert sub.name in artifacts(client, s.info.run_id)


# -- resume: no duplicates ------------------------------------------------------------------------------------------
def kf_train_process(data: Path, oof: Path, configs: list[Path], crash_at: str | None = None) -> subprocess.CompletedProcess:
    """`kf train --track` in a fresh process (``KF_CRASH_AT`` kills it at a named point, see kfold.io.crash_point)."""
    env = {**os.environ}
    env.pop("KF_CRASH_AT", None)
    if crash_at:
        env["KF_CRASH_AT"] = crash_at
    oof.mkdir(parents=True, exist_ok=True)
    with open(oof / "stdout.txt", "w+") as out, open(oof / "stderr.txt", "w+") as err:  # files: see test_kill
        rc = subprocess.run([sys.executable, "-m", "kf", *train_args(data, oof, configs, "--track")],
                            env=env, stdout=out, stderr=err, timeout=1800).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([], rc, out.read(), err.read())


@pytest.mark.parametrize("point", ["write:last.pt#2", "fold-done#1"])
def test_killed_and_resumed_training_continues_the_same_mlflow_runs(backend, tiny_data, tmp_path, monkeypatch, point):
    """Killed while saving epoch 2's checkpoint (the epoch is replayed) or between a fold's end and its tracking."""
    experiment = f"kill-{point}"
    client = use(monkeypatch, backend, experiment, tmp_path)
    configs = write_configs(tmp_path / "configs")[:1]
    killed = kf_train_process(tiny_data, tmp_path / "oof", configs, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tracking.reset()
    rerun = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs, "--track"))  # here: faster
    assert rerun.exit_code == 0, rerun.output
    assert "warning" not in rerun.output
    (parent,) = runs_of(client, experiment, "run")
    assert parent.info.status == "FINISHED"
    assert len(client.get_metric_history(parent.info.run_id, "oof_macro_f1")) == 1
    folds = runs_of(client, experiment, "fold")
    assert sorted(r.data.tags["kf.fold"] for r in folds) == ["0", "1"]
    for r in folds:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
        assert steps(client, r.info.run_id) == [1, 2]  # no epoch twice, none missing
        assert steps(client, r.info.run_id, "train_loss") == [1, 2]

    tracking.reset()
    again = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs, "--track"))
    assert again.exit_code == 0 and "finished earlier" in again.output  # a rerun that skips every fold adds nothing
    assert [r.info.run_id for r in runs_of(client, experiment, "run")] == [parent.info.run_id]
    assert len(runs_of(client, experiment, "fold")) == 2
    assert len(client.get_metric_history(parent.info.run_id, "oof_macro_f1")) == 1


def test_force_retrain_starts_a_new_parent_run(backend, tiny_data, tmp_path, monkeypatch):
    client = use(monkeypatch, backend, "force", tmp_path)
    configs = write_configs(tmp_path / "configs", epochs=1)[:1]
    args = train_args(tiny_data, tmp_path / "oof", configs, "--track", "--fold", "0")
    assert CliRunner().invoke(main, args).exit_code == 0
    tracking.reset()
    res = CliRunner().invoke(main, args + ["--force"])
    assert res.exit_code == 0, res.output
    parents = runs_of(client, "force", "run")
    assert len(parents) == 2
    for p in parents:  # each parent has its own fold 0
        kids = [r for r in runs_of(client, "force", "fold") if r.data.tags["mlflow.parentRunId"] == p.info.run_id]
        assert len(kids) == 1 and steps(client, kids[0].info.run_id) == [1]


# -- tracking never breaks training -------------------------------------------------------------------------------
def warnings_of(caplog) -> list[str]:
    """The tracking warnings (the CLI prints each as one ``warning: ...`` line on stderr)."""
    return [r.getMessage() for r in caplog.records if r.name == "kfold.tracking" and r.levelname == "WARNING"]


@pytest.mark.tracking_server
def test_server_stopped_mid_run_gives_one_warning_and_training_finishes(tiny_data, tmp_path, monkeypatch, caplog):
    proc, uri = start_server(tmp_path / "server")
    try:
        client = use(monkeypatch, uri, "stopped", tmp_path)
        real = tracking.log_epoch
        calls = []

        def log_then_stop(*args, **kwargs):  # the server goes away after the first epoch reached it
            real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                assert steps(client, runs_of(client, "stopped", "fold")[0].info.run_id) == [1]
                stop_server(proc)

        monkeypatch.setattr(tracking, "log_epoch", log_then_stop)
        res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", write_configs(tmp_path / "c")[:1], "--track"))
    finally:
        stop_server(proc)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "oof" / "a" / "oof.csv").exists() and len(calls) == 4  # every epoch of both folds trained
    (line,) = warnings_of(caplog)
    assert uri in line and "not logged" in line and "\n" not in line


def test_unreachable_server_from_the_start_gives_one_warning_and_training_finishes(tiny_data, tmp_path, monkeypatch,
                                                                                   caplog):
    use(monkeypatch, f"http://127.0.0.1:{free_port()}", "nowhere", tmp_path)
    configs = write_configs(tmp_path / "c", epochs=1)[:1]
    res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs, "--track"))
    assert res.exit_code == 0, res.output
    assert len(warnings_of(caplog)) == 1
    assert json.loads((tmp_path / "oof" / "a" / "run.json").read_text())["finished"] is True


def test_track_without_mlflow_installed_is_a_one_line_error_naming_the_extra(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    configs = write_configs(tmp_path / "c")[:1]
    for args in (train_args(tiny_data, tmp_path / "oof", configs, "--track"),
                 ["submit", "--data", str(tiny_data), "--from", "x", "--out", str(tmp_path / "s.csv"), "--track"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2
        (line,) = res.output.strip().splitlines()
        assert line.startswith("error: --track: MLflow is not installed; pip install -e '.[track]'")
    assert not (tmp_path / "oof" / "a").exists()  # nothing written before the check
    monkeypatch.setenv("KF_TRACK", "1")
    res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs))
    assert res.exit_code == 2 and "'.[track]'" in res.output


def test_track_config_field_and_kf_track_do_not_change_what_a_run_compares(tiny_data, tmp_path, monkeypatch):
    """A run started without tracking resumes with it (track is a runtime setting, like threads)."""
    client = use(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}", "switch", tmp_path)
    configs = write_configs(tmp_path / "c", epochs=1)[:1]
    assert CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs, "--fold", "0")).exit_code == 0
    assert runs_of(client, "switch", "run") == []
    configs[0].write_text(yaml.safe_dump({**TINY, "seed": 3, "epochs": 1, "track": True}))
    res = CliRunner().invoke(main, train_args(tiny_data, tmp_path / "oof", configs))
    assert res.exit_code == 0, res.output
    (parent,) = runs_of(client, "switch", "run")
    folds = runs_of(client, "switch", "fold")
    assert sorted(r.data.tags["kf.fold"] for r in folds) == ["0", "1"]  # fold 0, trained untracked, logged from its files
    assert all(steps(client, r.info.run_id) == [1] for r in folds)


def test_ray_workers_get_the_drivers_tracking_uri_made_absolute(tmp_path, monkeypatch):
    from kfold.config import TrainConfig

    use(monkeypatch, "sqlite:///mlflow.db", "ray-env", tmp_path)  # MLflow's local default: relative to the folder
    assert tracking.ray_init_kwargs([TrainConfig(track=False)]) == {}
    env = tracking.ray_init_kwargs([TrainConfig(track=False), TrainConfig(name="b", track=True)])["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert env["MLFLOW_EXPERIMENT_NAME"] == "ray-env"
