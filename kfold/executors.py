"""Run (run, fold) jobs as Ray tasks, on one machine's GPUs/CPUs or a cluster.

Each job is :func:`kfold.train.run_fold` in a Ray task that asks for one GPU
where the cluster has GPUs, else ``cpus_per_task`` CPUs. Tasks write to the
same ``oof/`` layout as the local executor (on a cluster, ``--oof`` and the
data must be on storage every node mounts at the same path). Tasks are
idempotent (a finished fold is skipped; an interrupted one resumes), so Ray's
bounded retries (``max_retries``, ``retry_exceptions``) are safe. Ray is an
optional extra: ``pip install -e '.[ray]'``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .io import KfError


def _fold_task(cfg_dict: dict, fold: int, run_dir: str, data, oof_dir: str) -> dict:
    from .config import TrainConfig
    from .train import run_fold

    lines: list[str] = []
    r = run_fold(TrainConfig(**cfg_dict), fold, run_dir, data, oof_dir, echo=lines.append, progress=False)
    return {**r, "log": lines}


def run_on_ray(jobs: list[tuple], data, oof_dir: str | Path, echo: Callable[[str], None] = print,
               address: str | None = None, max_retries: int = 2, cpus_per_task: int | None = None) -> list[dict]:
    """Run ``jobs`` (``(cfg, fold, run_dir)`` tuples) as Ray tasks and wait for all of them.

    Args:
        address: an existing cluster (``auto`` or ``host:port``); None starts
            a local instance using this machine's CPUs and GPUs.
        max_retries: retries per task after a crash or an exception.
        cpus_per_task: CPUs per task on CPU-only clusters (default: the CPU
            count of the smallest node, so one task fills one machine, as torch
            uses all its cores; pass less to pack several tasks per machine).

    Returns:
        One fold result per job, in job order.

    Raises:
        KfError: Ray is not installed, or a task still fails after its retries.
    """
    try:
        import ray
    except ImportError:
        raise KfError("--executor ray: Ray is not installed; pip install -e '.[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1"}})
        started = True
    try:
        res = ray.cluster_resources()
        if res.get("GPU", 0) >= 1:
            opts = {"num_gpus": 1, "num_cpus": 1}
        else:
            smallest = min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive"))
            opts = {"num_cpus": cpus_per_task or max(1, int(smallest))}
        task = ray.remote(max_retries=max_retries, retry_exceptions=True, **opts)(_fold_task)
        data_ref = ray.put(data)
        refs = [task.remote(cfg.to_dict(), f, str(run_dir), data_ref, str(oof_dir)) for cfg, f, run_dir in jobs]
        echo(f"ray: {len(refs)} fold task(s) submitted with {opts}")
        results = []
        for (cfg, f, _), ref in zip(jobs, refs):
            try:
                r = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), KfError) else None
                raise KfError(str(cause) if cause else f"ray task {cfg.name} fold {f} failed after {max_retries} retries: "
                              f"{str(e).strip().splitlines()[-1]}") from None
            for line in r.pop("log"):
                echo(line)
            results.append(r)
        return results
    finally:
        if started:
            ray.shutdown()
