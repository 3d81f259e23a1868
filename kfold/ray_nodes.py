"""The driver's view of a Ray cluster's nodes: what a task asks for, where it fits, whether nodes see the shared storage.

Used by :mod:`kfold.executors`; Ray itself is passed in (``ray``) or
imported inside the functions that need it, never at import.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from .io import KfError, ParamError, atomic_write

NODE_WAIT_S = 120.0  # KF_RAY_NODE_WAIT: how long a task that no alive node can run waits for one
STORAGE_CHECK_S = 120.0


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
        ParamError: no alive node has a CPU (naming ``executor`` of :func:`kfold.train.train_runs`).
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    gpu_nodes = [r for r in alive if r.get("GPU", 0) >= 1 and r.get("CPU", 0) >= 1]
    if gpu_nodes and device != "cpu":
        per_gpu = min(int(r["CPU"] // r["GPU"]) for r in gpu_nodes)
        return {"num_gpus": 1, "num_cpus": cpus_per_task or max(1, per_gpu)}
    cpus = [int(r["CPU"]) for r in alive if r.get("CPU", 0) >= 1]
    if not cpus:
        raise ParamError("{executor} ray: the Ray cluster has no node with a CPU; start workers with "
                         "`ray start --address=...`", "executor")
    return {"num_cpus": cpus_per_task or min(cpus)}


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, stripped (an exception's own message, after Ray's traceback)."""
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[-1] if lines else ""


def describe_request(res: dict) -> str:
    """``2 CPUs`` or ``1 GPU + 4 CPUs``: a :func:`task_resources` request in words."""
    cpus = f"{res['num_cpus']} CPU{'s' * (res['num_cpus'] != 1)}"
    return f"1 GPU + {cpus}" if res.get("num_gpus") else cpus


def _sees_storage(marker: str, token: str, data_root: str) -> str | None:
    """On a node: None when it sees the driver's ``marker`` file holding ``token`` and the ``data_root`` folder, else why not
    (a :class:`kfold.io.ParamError` template: ``{data_root}`` stands for the parameter)."""
    try:
        text = Path(marker).read_text()
    except OSError as e:
        return f"cannot read {marker}, which kf train just wrote there ({e.strerror or type(e).__name__})"
    if text != token:
        return f"{Path(marker).parent} is another folder there (its {Path(marker).name} holds other text)"
    if not Path(data_root).is_dir():
        return f"{{data_root}} {data_root}: no such folder"
    return None


def check_shared_storage(ray, nodes: list[dict], oof_dir: Path, data_root: Path, timeout_s: float = STORAGE_CHECK_S) -> int:
    """Check that every alive node with a CPU sees ``oof_dir`` and ``data_root`` at the driver's paths.

    The driver writes a marker file with a random token into ``oof_dir``; a
    zero-CPU task pinned to each node (Ray's ``NodeAffinitySchedulingStrategy``)
    reads it back (:func:`_sees_storage`). The marker is removed afterwards.
    Nodes that join later are not checked.

    Returns:
        The number of nodes checked.

    Raises:
        ParamError: a node cannot see the folders, or did not answer within
            ``timeout_s`` seconds (one line naming ``oof_dir``, ``data_root``, the nodes and why).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = oof_dir / f".kf-storage-check-{token[:12]}"
    with atomic_write(marker) as fh:
        fh.write(token)
    try:
        check = ray.remote(max_retries=0)(_sees_storage)
        refs = {check.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token, str(data_root)): n for n in nodes
                if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        bad = [f"{node_label(refs[r])}: no answer within {timeout_s:.0f} s" for r in late]
        for r in ready:
            try:
                why = ray.get(r)
            except ray.exceptions.RayError as e:
                why = last_line(e)
            if why:
                bad.append(f"{node_label(refs[r])}: {why}")
    finally:
        marker.unlink(missing_ok=True)
    if bad:
        raise ParamError(f"{{oof_dir}} {oof_dir}: every Ray node must see {{oof_dir}} and {{data_root}} at the same paths "
                         f"(shared storage, docs/scale-out.md), but {'; '.join(bad)}", "oof_dir", "data_root")
    return len(refs)


def node_label(node: dict | str | None, ips: dict | None = None) -> str:
    """``node 1a2b3c4d (10.0.0.5)`` from a ``ray.nodes()`` entry, or from a node id and a node id -> IP map."""
    if node is None:
        return "an unknown node"
    if isinstance(node, dict):
        node, ip = node["NodeID"], node.get("NodeManagerAddress")
    else:
        ip = (ips or {}).get(node)
    return f"node {node[:8]}" + (f" ({ip})" if ip else "")


def _fits(request: dict, nodes: list[dict]) -> bool:
    """Whether some alive node has the CPUs/GPUs of a task's ``request`` (``task_resources``' dict) in total."""
    want = {"CPU": request.get("num_cpus", 0), "GPU": request.get("num_gpus", 0)}
    return any(n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v for k, v in want.items()) for n in nodes)


def node_wait_s() -> float:
    """Seconds to wait for a node that can run a pending task: ``KF_RAY_NODE_WAIT``, else :data:`NODE_WAIT_S`.

    Raises:
        KfError: the variable is not a number >= 0.
    """
    text = os.environ.get("KF_RAY_NODE_WAIT", str(NODE_WAIT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise KfError(f"KF_RAY_NODE_WAIT={text!r}: give seconds, a number >= 0")
    return value
