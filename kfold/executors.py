"""Run (run, fold) jobs as Ray tasks, on one machine's GPUs/CPUs or a cluster.

Each job is :func:`kfold.train.run_fold` in a Ray task that asks for one GPU
where the cluster has GPUs, else a whole node's CPUs (see
:func:`task_resources`). Tasks write to the same ``oof/`` layout as the local
executor (on a cluster, ``--oof`` and the data must be on storage every node
mounts at the same path). Tasks are idempotent (a finished fold is skipped; an
interrupted one resumes from ``last.pt``), so retrying one is safe: a task
whose worker dies or that raises is retried up to ``max_retries`` times; a
:class:`~kfold.io.KfError` (bad input, the same on every attempt) is not
retried. Ray is an optional extra (``pip install -e '.[ray]'``) and is
imported only here, only by ``--executor ray``. See ``docs/scale-out.md``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

from . import tracking
from .io import KfError

MAX_RETRIES = 2


def require_ray():
    """Import and return the ``ray`` module.

    Raises:
        KfError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise KfError("--executor ray: Ray is not installed; pip install -e '.[ray]' (or use --executor local)") from None
    return ray


def task_resources(nodes: list[dict], device: str = "auto", cpus_per_task: int | None = None) -> dict:
    """Ray resources of one fold task: ``{"num_gpus": 1, "num_cpus": c}`` or ``{"num_cpus": c}``.

    Args:
        nodes: ``ray.nodes()``: dicts with ``Alive`` and ``Resources``
            (``{"CPU": 16.0, "GPU": 2.0, ...}``).
        device: the config's ``device``; ``cpu`` never asks for a GPU.
        cpus_per_task: CPUs per task instead of the default below.

    Returns:
        Where an alive node has a GPU and ``device`` is not ``cpu``: one GPU
        and the CPUs that come with one GPU on the GPU node with the fewest CPUs
        per GPU (for DataLoader workers). Else all the CPUs of the smallest
        node with CPUs, so a task fills a machine as ``kf train`` does locally
        (torch uses all the cores it is given); pass ``cpus_per_task`` to pack
        several tasks per machine. Nodes without CPUs (a head started with
        ``--num-cpus 0``) are ignored.

    Raises:
        KfError: no alive node has a CPU.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    gpu_nodes = [r for r in alive if r.get("GPU", 0) >= 1 and r.get("CPU", 0) >= 1]
    if gpu_nodes and device != "cpu":
        per_gpu = min(int(r["CPU"] // r["GPU"]) for r in gpu_nodes)
        return {"num_gpus": 1, "num_cpus": cpus_per_task or max(1, per_gpu)}
    cpus = [int(r["CPU"]) for r in alive if r.get("CPU", 0) >= 1]
    if not cpus:
        raise KfError("--executor ray: the Ray cluster has no node with a CPU; start workers with `ray start --address=...`")
    return {"num_cpus": cpus_per_task or min(cpus)}


def _fold_task(cfg_dict: dict, fold: int, run_dir: str, data, oof_dir: str, cores: int) -> dict:
    """One (run, fold) in a Ray worker: :func:`kfold.train.run_fold` with ``cores`` CPUs; its log lines come back."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from .config import TrainConfig
    from .train import run_fold

    lines: list[str] = []
    try:
        r = run_fold(TrainConfig(**cfg_dict), fold, run_dir, data, oof_dir, echo=lines.append, progress=False, cores=cores)
    except KfError as e:
        # bad input: the same on every attempt, so returned (not retried) rather than raised
        return {"error": str(e), "log": lines}
    return {**r, "log": lines}


def _one_line(text: str) -> str:
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[-1] if lines else ""


def _describe(res: dict) -> str:
    cpus = f"{res['num_cpus']} CPU{'s' * (res['num_cpus'] != 1)}"
    return f"1 GPU + {cpus}" if res.get("num_gpus") else cpus


def _prebuild_caches(jobs: list[tuple], data, oof_dir: Path, echo: Callable[[str], None]) -> None:
    """Build each image size's caches once here, so that parallel tasks do not all decode the same images."""
    from .train import image_caches

    sizes = sorted({tuple(cfg.image_size) for cfg, f, run_dir in jobs
                    if not (Path(run_dir) / f"fold{f}" / "result.json").exists()})
    for size in sizes:
        t0 = time.time()
        image_caches(data, size, oof_dir)
        echo(f"ray: image cache {size[0]}x{size[1]} ready in {time.time() - t0:.1f} s")


def run_on_ray(jobs: list[tuple], data, oof_dir: str | Path, echo: Callable[[str], None] = print,
               address: str | None = None, max_retries: int = MAX_RETRIES, cpus_per_task: int | None = None) -> list[dict]:
    """Run ``jobs`` (``(cfg, fold, run_dir)`` tuples) as Ray tasks and wait for all of them.

    Each finished task's log lines are echoed as it finishes. A failed task
    does not stop the others; the failures are raised together at the end
    (finished folds stay finished, so a rerun does only what failed).

    Args:
        address: an existing cluster (``auto`` or ``host:port``). None: Ray's
            default (``RAY_ADDRESS``, else a cluster started on this machine
            with ``ray start``, else a new local instance, shut down at the end).
            Ignored when Ray is already initialised in this process.
        max_retries: retries per task after its worker died or it raised
            (a :class:`KfError` is not retried).
        cpus_per_task: see :func:`task_resources`.

    Returns:
        One fold result (``result.json`` plus ``skipped``) per job, in job order.

    Raises:
        KfError: Ray is not installed, no cluster at ``address``, or tasks
            still failed after their retries (one line naming each run and fold).
    """
    ray = require_ray()
    oof_dir = Path(oof_dir).resolve()
    data = dataclasses.replace(data, root=Path(data.root).resolve())  # workers may run in another folder
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     **tracking.ray_init_kwargs([cfg for cfg, _, _ in jobs]))
        except ConnectionError as e:
            raise KfError(f"--address {address}: {_one_line(e).rstrip('.')}. Is a cluster running there "
                          "(`ray start --head`)? If Ray logged InvalidAuthToken, set RAY_AUTH_MODE=token with the "
                          "cluster's token (docs/scale-out.md)") from None
        started = True
    try:
        nodes = ray.nodes()
        _prebuild_caches(jobs, data, oof_dir, echo)
        task = ray.remote(max_retries=max_retries, retry_exceptions=True)(_fold_task)
        data_ref = ray.put(data)
        pending = {}
        for i, (cfg, f, run_dir) in enumerate(jobs):
            res = task_resources(nodes, cfg.device, cpus_per_task)
            cfg_dict = cfg.to_dict()
            if res.get("num_gpus") and cfg.device.startswith("cuda"):
                cfg_dict["device"] = "cuda"  # the task sees only the GPU Ray gave it, as cuda:0
            ref = task.options(**res).remote(cfg_dict, f, str(Path(run_dir).resolve()), data_ref, str(oof_dir),
                                              int(res["num_cpus"]))
            pending[ref] = (i, cfg.name, f)
        total = ray.cluster_resources()
        kinds = sorted({_describe(task_resources(nodes, c.device, cpus_per_task)) for c, _, _ in jobs})
        echo(f"ray: {len(jobs)} fold task(s) on {sum(bool(n.get('Alive')) for n in nodes)} node(s) "
             f"({int(total.get('CPU', 0))} CPUs, {int(total.get('GPU', 0))} GPUs); each asks for {' or '.join(kinds)}; "
             f"up to {max_retries} retries")
        results: dict[int, dict] = {}
        failures: list[str] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, name, f = pending.pop(ready[0])
            try:
                r = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                failures.append(f"{name} fold {f} failed after {max_retries} retries: {_one_line(e)}")
                continue
            for line in r.pop("log"):
                echo(line)
            if "error" in r:
                failures.append(f"{name} fold {f}: {' '.join(str(r['error']).splitlines())}")
            else:
                results[i] = r
        if failures:
            head = "" if len(failures) == 1 else f"{len(failures)} of {len(jobs)} fold tasks failed: "
            raise KfError(head + "; ".join(failures))
        return [results[i] for i in range(len(jobs))]
    finally:
        if started:
            ray.shutdown()
