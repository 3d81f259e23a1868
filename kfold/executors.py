"""Run (run, fold) jobs as Ray tasks, on one machine's GPUs/CPUs or a cluster.

Each job is :func:`kfold.train.run_fold` in a Ray task that asks for one GPU
where the cluster has GPUs, else a whole node's CPUs (see
:func:`task_resources`). Tasks write to the same ``oof/`` layout as the local
executor; on a cluster, ``--oof`` and the data must be on storage every node
mounts at the same path, which :func:`check_shared_storage` checks on every
node before any task starts. Tasks are idempotent (a finished fold is skipped;
an interrupted one resumes from ``last.pt``), so retrying one is safe: an
attempt whose worker dies, whose node leaves the cluster, or that raises is
reported in one line and submitted again, up to ``max_retries`` times, on any
node that can run it; a :class:`~kfold.io.KfError` (bad input, the same on
every attempt) is not retried. A task that no alive node can run (all nodes
lost) is given up after ``KF_RAY_NODE_WAIT`` seconds, with one line naming the
folds that did not finish. Ray is an optional extra (``pip install -e
'.[ray]'``) and is imported only here, only by ``--executor ray``. See
``docs/scale-out.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable

from . import tracking
from .io import KfError, read_json

MAX_RETRIES = 2
NODE_WAIT_S = 120.0  # KF_RAY_NODE_WAIT: how long a task that no alive node can run waits for one
STORAGE_CHECK_S = 120.0
log = logging.getLogger(__name__)


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


def _fold_task(cfg_dict: dict, fold: int, run_dir: str, data, oof_dir: str, cores: int):
    """One attempt at one (run, fold) in a Ray worker: a generator of two items.

    Yields first where it runs (``{"node": <Ray node id>, "pid": <worker pid>}``),
    so that the driver can name the node of an attempt that dies without
    returning, then :func:`kfold.train.run_fold`'s result with ``cores`` CPUs
    and its log lines (``log``), or ``{"error": <KfError text>, "log": [...]}``.
    """
    import ray

    yield {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from .config import TrainConfig
    from .train import run_fold

    lines: list[str] = []
    try:
        r = run_fold(TrainConfig(**cfg_dict), fold, run_dir, data, oof_dir, echo=lines.append, progress=False, cores=cores)
    except KfError as e:
        # bad input: the same on every attempt, so returned (not retried) rather than raised
        yield {"error": str(e), "log": lines}
        return
    yield {**r, "log": lines}


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


def _sees_storage(marker: str, token: str, data_root: str) -> str | None:
    """On a node: None when it sees the driver's ``marker`` file holding ``token`` and the ``data_root`` folder, else why not."""
    try:
        text = Path(marker).read_text()
    except OSError as e:
        return f"cannot read {marker}, which kf train just wrote there ({e.strerror or type(e).__name__})"
    if text != token:
        return f"{Path(marker).parent} is another folder there (its {Path(marker).name} holds other text)"
    if not Path(data_root).is_dir():
        return f"--data {data_root}: no such folder"
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
        KfError: a node cannot see the folders, or did not answer within
            ``timeout_s`` seconds (one line naming the nodes and why).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .io import atomic_write

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
        bad = [f"{_node_name(refs[r])}: no answer within {timeout_s:.0f} s" for r in late]
        for r in ready:
            try:
                why = ray.get(r)
            except ray.exceptions.RayError as e:
                why = _one_line(e)
            if why:
                bad.append(f"{_node_name(refs[r])}: {why}")
    finally:
        marker.unlink(missing_ok=True)
    if bad:
        raise KfError(f"--oof {oof_dir}: every Ray node must see --oof and --data at the same paths (shared storage, "
                      f"docs/scale-out.md), but {'; '.join(bad)}")
    return len(refs)


def _node_name(node: dict | str | None, ips: dict | None = None) -> str:
    """``node 1a2b3c4d (10.0.0.5)`` from a ``ray.nodes()`` entry, or from a node id and a node id -> IP map."""
    if node is None:
        return "an unknown node"
    if isinstance(node, dict):
        node, ip = node["NodeID"], node.get("NodeManagerAddress")
    else:
        ip = (ips or {}).get(node)
    return f"node {node[:8]}" + (f" ({ip})" if ip else "")


def _why(ray, e: Exception) -> str:
    """What happened to a failed attempt, in a few words."""
    x = ray.exceptions
    if isinstance(e, x.NodeDiedError):
        return "its node died (removed, preempted, or its raylet crashed)"
    if isinstance(e, x.OutOfMemoryError):
        return "Ray's memory monitor killed it (its node ran low on memory)"
    if isinstance(e, x.WorkerCrashedError):
        return "its worker process died (killed, e.g. by the kernel's out-of-memory killer)"
    if isinstance(e, x.RayTaskError):
        return _one_line(e)  # the task's own exception, e.g. "RuntimeError: CUDA error: ..."
    return f"{type(e).__name__}: {_one_line(e)}"


@contextlib.contextmanager
def _quiet_ray_errors():
    """Keep Ray's driver from printing each system error (a dead worker, a lost node) as a screenful of text.

    Ray's driver prints the errors its cluster publishes on stdout, prefixed
    ``(raylet)``; :func:`run_on_ray` prints one line per lost attempt instead.
    The messages go to this module's logger at DEBUG level. Ray has no
    setting for this, so its private printer is wrapped while the tasks run;
    where that printer is missing (another Ray version), nothing changes.
    """
    try:
        from ray._private import worker
        printer = worker.print_to_stdstream
    except (ImportError, AttributeError):
        yield
        return

    def quiet(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            log.debug("ray: %s", " ".join(data.get("lines", [])))
        else:
            printer(data, *args, **kwargs)

    worker.print_to_stdstream = quiet
    try:
        yield
    finally:
        worker.print_to_stdstream = printer


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


def run_on_ray(jobs: list[tuple], data, oof_dir: str | Path, echo: Callable[[str], None] = print,
               address: str | None = None, max_retries: int = MAX_RETRIES, cpus_per_task: int | None = None,
               wait_s: float | None = None) -> list[dict]:
    """Run ``jobs`` (``(cfg, fold, run_dir)`` tuples) as Ray tasks and wait for all of them.

    First checks that every node sees ``oof_dir`` and the data at the same
    paths (:func:`check_shared_storage`). Each finished task's log lines are
    echoed as it finishes, after a line naming the node it ran on. A failed
    attempt (its worker died, its node left the cluster, or it raised) is
    reported in one line (run, fold, attempt, node, why) and submitted again,
    up to ``max_retries`` times; the retry resumes from the fold's ``last.pt``
    on whichever node Ray places it, and its start is reported in one line
    too. A task that no alive node can run (all nodes lost) is given up after
    ``wait_s`` seconds. A failed task does not stop the others; the failures
    are raised together at the end (finished folds stay finished, so a rerun
    does only what failed).

    Args:
        address: an existing cluster (``auto`` or ``host:port``). None: Ray's
            default (``RAY_ADDRESS``, else a cluster started on this machine
            with ``ray start``, else a new local instance, shut down at the end).
            Ignored when Ray is already initialised in this process.
        max_retries: retries per task after its worker died or it raised
            (a :class:`KfError` is not retried).
        cpus_per_task: see :func:`task_resources`.
        wait_s: seconds to wait for a node that can run a pending task; None:
            :func:`node_wait_s`.

    Returns:
        One fold result (``result.json`` plus ``skipped``, ``node``: the Ray
        node id it ran on, ``attempts``) per job, in job order.

    Raises:
        KfError: Ray is not installed, no cluster at ``address``, a node cannot
            see the shared folders, or tasks still failed after their retries
            or found no node (one line naming each run and fold).
    """
    ray = require_ray()
    wait_s = node_wait_s() if wait_s is None else wait_s
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
        with _quiet_ray_errors():
            return _run_tasks(ray, jobs, data, oof_dir, echo, max_retries, cpus_per_task, wait_s)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(ray, jobs, data, oof_dir: Path, echo, max_retries: int, cpus_per_task: int | None, wait_s: float) -> list[dict]:
    """:func:`run_on_ray` once Ray is initialised: submit, watch, retry, report."""
    nodes = ray.nodes()
    ips = {n["NodeID"]: n.get("NodeManagerAddress") for n in nodes}
    checked = check_shared_storage(ray, nodes, oof_dir, data.root)
    _prebuild_caches(jobs, data, oof_dir, echo)
    task = ray.remote(max_retries=0, num_returns="streaming")(_fold_task)  # retried here, to say where and why
    data_ref = ray.put(data)
    requests = [task_resources(nodes, cfg.device, cpus_per_task) for cfg, _, _ in jobs]
    attempts = [0] * len(jobs)
    where: dict[int, str | None] = {}  # job -> node id of its current attempt, once it has started
    pending: dict = {}  # attempt (an ObjectRefGenerator) -> job

    def name(i: int) -> str:
        return f"{jobs[i][0].name} fold {jobs[i][1]}"

    def node_name(node_id: str | None) -> str:
        if node_id is not None and node_id not in ips:  # a node that joined after the start
            ips.update({n["NodeID"]: n.get("NodeManagerAddress") for n in ray.nodes()})
        return _node_name(node_id, ips)

    def submit(i: int) -> None:
        cfg, f, run_dir = jobs[i]
        res = requests[i]
        cfg_dict = cfg.to_dict()
        if res.get("num_gpus") and cfg.device.startswith("cuda"):
            cfg_dict["device"] = "cuda"  # the task sees only the GPU Ray gave it, as cuda:0
        attempts[i] += 1
        where[i] = None
        pending[task.options(**res).remote(cfg_dict, f, str(Path(run_dir).resolve()), data_ref, str(oof_dir),
                                           int(res["num_cpus"]))] = i

    for i in range(len(jobs)):
        submit(i)
    total = ray.cluster_resources()
    kinds = sorted({_describe(r) for r in requests})
    echo(f"ray: {len(jobs)} fold task(s) on {sum(bool(n.get('Alive')) for n in nodes)} node(s) "
         f"({int(total.get('CPU', 0))} CPUs, {int(total.get('GPU', 0))} GPUs; {checked} checked to see --oof and --data); "
         f"each asks for {' or '.join(kinds)}; up to {max_retries} retries")
    results: dict[int, dict] = {}
    failures: list[str] = []
    stranded: list[int] = []  # jobs given up for want of a node
    stalled_since = None
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        if not ready:
            waiting = [i for i in pending.values() if where[i] is None]
            nodes = ray.nodes() if waiting else nodes
            ips.update({n["NodeID"]: n.get("NodeManagerAddress") for n in nodes})
            homeless = [i for i in waiting if not _fits(requests[i], nodes)]
            if not homeless:
                stalled_since = None
            elif stalled_since is None:
                stalled_since = time.monotonic()
                echo(f"ray: no alive node can run {', '.join(name(i) for i in sorted(homeless))} "
                     f"(each asks for {' or '.join(sorted({_describe(requests[i]) for i in homeless}))}); "
                     f"waiting up to {wait_s:.0f} s for one to join (KF_RAY_NODE_WAIT)")
            elif time.monotonic() - stalled_since >= wait_s:
                for gen in [g for g, i in pending.items() if i in homeless]:
                    del pending[gen]
                    with contextlib.suppress(Exception):
                        ray.cancel(gen, force=True)
                stranded += homeless
                stalled_since = None
            continue
        gen = ready[0]
        i = pending[gen]
        try:
            item = ray.get(next(gen))
        except (ray.exceptions.RayError, StopIteration) as e:
            del pending[gen]
            why = _why(ray, e) if isinstance(e, ray.exceptions.RayError) else "it ended without a result"
            lost = f"ray: {name(i)} attempt {attempts[i]} lost on {node_name(where[i])}: {why}"
            if attempts[i] <= max_retries:
                echo(f"{lost}; retry {attempts[i]} of {max_retries} resumes from its last finished epoch")
                submit(i)
            else:
                echo(f"{lost}; no retries left")
                failures.append(f"{name(i)} failed after {max_retries} retries: {why}")
            continue
        if "pid" in item:  # the attempt started: where
            where[i] = item["node"]
            if attempts[i] > 1:
                echo(f"ray: {name(i)} attempt {attempts[i]} started on {node_name(item['node'])}")
            continue
        del pending[gen]
        echo(f"ray: {name(i)} ran on {node_name(where[i])}" + (f", attempt {attempts[i]}" if attempts[i] > 1 else ""))
        for line in item.pop("log"):
            echo(line)
        if "error" in item:
            failures.append(f"{name(i)}: {' '.join(str(item['error']).splitlines())}")
        else:
            results[i] = {**item, "node": where[i], "attempts": attempts[i]}
    for i in list(stranded):  # lost after it wrote result.json, between the fold's end and its reply: finished
        done = Path(jobs[i][2]) / f"fold{jobs[i][1]}" / "result.json"
        if done.exists():
            stranded.remove(i)
            results[i] = {**read_json(done), "skipped": False, "node": where[i], "attempts": attempts[i]}
    if stranded:
        failures.append(f"{', '.join(name(i) for i in sorted(stranded))} did not finish: no alive Ray node could run "
                        f"{'them' if len(stranded) > 1 else 'it'} (waited {wait_s:.0f} s); finished folds are kept: "
                        "rerun the same kf train command once nodes are back (or with --executor local) and "
                        f"{'these folds resume' if len(stranded) > 1 else 'it resumes'} from the last finished epoch")
    if failures:
        head = "" if len(failures) == 1 else f"{len(failures)} failures: "
        raise KfError(head + "; ".join(failures))
    return [results[i] for i in range(len(jobs))]
