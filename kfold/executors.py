"""Run jobs as Ray tasks, on one machine's GPUs/CPUs or a cluster; nothing here knows what a job trains.

A job (:class:`Job`) is one call of a picklable function that
:func:`run_jobs_on_ray` is given, ``fold_job(spec, fold, shared, cores=...,
gpu=..., echo=...)``; ``kf train`` passes :func:`kfold.fold.fold_job`, one
(run, fold), through :func:`kfold.train.run_on_ray`. Each task asks for one
GPU where the cluster has GPUs, else a whole node's CPUs (see
:func:`task_resources`). On a cluster, ``--oof`` and the data must be on
storage every node mounts at the same path, which
:func:`check_shared_storage` checks on every node before any task starts.
Jobs must be idempotent (a finished fold is skipped; an interrupted one
resumes from ``last.pt``), so retrying one is safe: an attempt whose worker
dies, whose node leaves the cluster, or that raises is reported in one line
and submitted again, up to ``max_retries`` times, on any node that can run
it; a :class:`~kfold.io.KfError` (bad input, the same on every attempt) is
not retried. A task that no alive node can run (all nodes lost) is given up
after ``KF_RAY_NODE_WAIT`` seconds, with one line naming the jobs that did
not finish. Ray is an optional extra (``pip install -e '.[ray]'``) and is
imported only here, only by ``--executor ray``. See ``docs/scale-out.md``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .io import KfError, ParamError, read_json
from .ray_nodes import _fits, check_shared_storage, describe_request, last_line, node_label, node_wait_s, task_resources

MAX_RETRIES = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fold_job(spec, fold, shared, ...)`` in a Ray task.

    ``name`` names it in messages (``lite0 fold 2``); ``spec`` is picklable;
    ``device``: ``cpu`` never asks for a GPU; ``done``: the file a finished
    job leaves (a JSON result), read back when a task's reply was lost after
    it finished.
    """

    name: str
    spec: Any
    fold: int
    device: str = "auto"
    done: Path | None = None


def require_ray():
    """Import and return the ``ray`` module.

    Raises:
        ParamError: Ray is not installed (naming ``executor`` of :func:`kfold.train.train_runs`).
    """
    try:
        import ray
    except ImportError:
        raise ParamError("{executor} ray: Ray is not installed; pip install -e '.[ray]' (or use {executor} local)",
                         "executor") from None
    return ray


def _attempt(fold_job: Callable, spec, fold: int, shared, cores: int, gpu: bool):
    """One attempt at one job in a Ray worker: a generator of two items.

    Yields first where it runs (``{"node": <Ray node id>, "pid": <worker pid>}``),
    so that the driver can name the node of an attempt that dies without
    returning, then ``fold_job``'s result with its log lines (``log``), or
    ``{"error": <KfError text>, "params": [...], "log": [...]}`` (a :class:`ParamError`'s template and
    parameters, which the driver raises again, so that ``kf`` names them with its flags).
    """
    import ray

    yield {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    lines: list[str] = []
    try:
        r = fold_job(spec, fold, shared, cores=cores, gpu=gpu, echo=lines.append)
    except KfError as e:
        # bad input: the same on every attempt, so returned (not retried) rather than raised
        yield {"error": e.template if isinstance(e, ParamError) else str(e), "params": list(getattr(e, "params", ())),
               "log": lines}
        return
    yield {**r, "log": lines}


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
        return last_line(e)  # the task's own exception, e.g. "RuntimeError: CUDA error: ..."
    return f"{type(e).__name__}: {last_line(e)}"


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


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse a Ray address that is malformed or where nothing listens, in one line, before ``ray.init``.

    ``None``, ``auto`` and ``local`` are left to Ray. ``host:port`` (or
    ``ray://host:port``) must parse and accept a TCP connection within
    ``timeout_s`` seconds: ``ray.init`` itself retries an unreachable GCS for
    minutes and prints only its own log lines.

    Raises:
        ParamError: the address is not ``host:port``, or nothing answers there.
    """
    import socket

    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParamError(f"{{address}} {address}: expected auto or host:port, e.g. 10.0.0.5:6379", "address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ParamError(f"{{address}} {address}: cannot connect ({e.strerror or type(e).__name__}). Is a cluster "
                         "running there (`ray start --head`)?", "address") from None


def run_jobs_on_ray(jobs: list[Job], fold_job: Callable, shared, oof_dir: str | Path, data_root: str | Path,
                    echo: Callable[[str], None] = print, address: str | None = None, max_retries: int = MAX_RETRIES,
                    cpus_per_task: int | None = None, wait_s: float | None = None,
                    prepare: Callable[[], None] | None = None, init_kwargs: dict | None = None) -> list[dict]:
    """Run ``jobs`` as Ray tasks of ``fold_job`` and wait for all of them.

    First checks that every node sees ``oof_dir`` and ``data_root`` at the
    same paths (:func:`check_shared_storage`), then calls ``prepare`` (on
    this machine, before any task starts). Each finished task's log lines are
    echoed as it finishes, after a line naming the node it ran on. A failed
    attempt (its worker died, its node left the cluster, or it raised) is
    reported in one line (job, attempt, node, why) and submitted again, up to
    ``max_retries`` times, on whichever node Ray places it (the job resumes
    where it stopped), and its start is reported in one line too. A task that
    no alive node can run (all nodes lost) is given up after ``wait_s``
    seconds. A failed task does not stop the others; the failures are raised
    together at the end (finished jobs stay finished, so a rerun does only
    what failed).

    Args:
        fold_job: a picklable function (module level) called in the worker as
            ``fold_job(job.spec, job.fold, shared, cores=<CPUs of the task>,
            gpu=<the task has a GPU>, echo=<collects log lines>)``; returns a
            dict; raises :class:`KfError` for bad input (not retried).
        shared: passed to every call, put in Ray's object store once.
        oof_dir, data_root: absolute folders every node must see.
        address: an existing cluster (``auto`` or ``host:port``). None: Ray's
            default (``RAY_ADDRESS``, else a cluster started on this machine
            with ``ray start``, else a new local instance, shut down at the end).
            Ignored when Ray is already initialised in this process.
        max_retries: retries per task after its worker died or it raised
            (a :class:`KfError` is not retried).
        cpus_per_task: see :func:`task_resources`.
        wait_s: seconds to wait for a node that can run a pending task; None:
            :func:`node_wait_s`.
        init_kwargs: extra ``ray.init`` arguments (e.g. a ``runtime_env``).

    Returns:
        One result (``fold_job``'s dict plus ``node``: the Ray node id it ran
        on, and ``attempts``) per job, in job order.

    Raises:
        KfError: Ray is not installed, no cluster at ``address``, a node cannot
            see the shared folders, or tasks still failed after their retries
            or found no node (one line naming each job).
    """
    ray = require_ray()
    wait_s = node_wait_s() if wait_s is None else wait_s
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     **(init_kwargs or {}))
        except (ConnectionError, ValueError) as e:
            raise ParamError(f"{{address}} {address}: {last_line(e).rstrip('.')}. Is a cluster running there "
                             "(`ray start --head`)? If Ray logged InvalidAuthToken, set RAY_AUTH_MODE=token with the "
                             "cluster's token (docs/scale-out.md)", "address") from None
        started = True
    try:
        with _quiet_ray_errors():
            nodes = ray.nodes()
            checked = check_shared_storage(ray, nodes, Path(oof_dir), Path(data_root))
            if prepare is not None:
                prepare()
            return _run_tasks(ray, nodes, checked, jobs, fold_job, shared, echo, max_retries, cpus_per_task, wait_s)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(ray, nodes: list[dict], checked: int, jobs: list[Job], fold_job: Callable, shared, echo,
               max_retries: int, cpus_per_task: int | None, wait_s: float) -> list[dict]:
    """:func:`run_jobs_on_ray` once Ray is initialised and the storage checked: submit, watch, retry, report."""
    ips = {n["NodeID"]: n.get("NodeManagerAddress") for n in nodes}
    task = ray.remote(max_retries=0, num_returns="streaming")(_attempt)  # retried here, to say where and why
    shared_ref = ray.put(shared)
    requests = [task_resources(nodes, job.device, cpus_per_task) for job in jobs]
    attempts = [0] * len(jobs)
    where: dict[int, str | None] = {}  # job -> node id of its current attempt, once it has started
    pending: dict = {}  # attempt (an ObjectRefGenerator) -> job

    def name(i: int) -> str:
        return jobs[i].name

    def node_name(node_id: str | None) -> str:
        if node_id is not None and node_id not in ips:  # a node that joined after the start
            ips.update({n["NodeID"]: n.get("NodeManagerAddress") for n in ray.nodes()})
        return node_label(node_id, ips)

    def submit(i: int) -> None:
        res = requests[i]
        attempts[i] += 1
        where[i] = None
        pending[task.options(**res).remote(fold_job, jobs[i].spec, jobs[i].fold, shared_ref, int(res["num_cpus"]),
                                           bool(res.get("num_gpus")))] = i

    for i in range(len(jobs)):
        submit(i)
    total = ray.cluster_resources()
    kinds = sorted({describe_request(r) for r in requests})
    echo(f"ray: {len(jobs)} fold task(s) on {sum(bool(n.get('Alive')) for n in nodes)} node(s) "
         f"({int(total.get('CPU', 0))} CPUs, {int(total.get('GPU', 0))} GPUs; {checked} checked to see --oof and --data); "
         f"each asks for {' or '.join(kinds)}; up to {max_retries} retries")
    results: dict[int, dict] = {}
    failures: list[str] = []
    params: set[str] = set()  # of the ParamErrors among them
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
                     f"(each asks for {' or '.join(sorted({describe_request(requests[i]) for i in homeless}))}); "
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
            params.update(item.get("params", ()))
        else:
            results[i] = {**item, "node": where[i], "attempts": attempts[i]}
    for i in list(stranded):  # lost after it wrote its result file, between the job's end and its reply: finished
        done = jobs[i].done
        if done is not None and Path(done).exists():
            stranded.remove(i)
            results[i] = {**read_json(done), "skipped": False, "node": where[i], "attempts": attempts[i]}
    if stranded:
        failures.append(f"{', '.join(name(i) for i in sorted(stranded))} did not finish: no alive Ray node could run "
                        f"{'them' if len(stranded) > 1 else 'it'} (waited {wait_s:.0f} s); finished folds are kept: "
                        "rerun the same kf train command once nodes are back (or with --executor local) and "
                        f"{'these folds resume' if len(stranded) > 1 else 'it resumes'} from the last finished epoch")
    if failures:
        head = "" if len(failures) == 1 else f"{len(failures)} failures: "
        raise ParamError(head + "; ".join(failures), *sorted(params)) if params else KfError(head + "; ".join(failures))
    return [results[i] for i in range(len(jobs))]
