"""The one owner of ``run.json``: the record of a run or ensemble folder, listing the runs of an ``--oof`` folder,
and resolving a run or ensemble name (``lite0``, ``ensemble/best``) to its folder.

A folder under ``--oof`` is a run (or an ensemble, or an imported run) when it
holds a ``run.json``; its ``kind`` says which (``run``, the default;
``ensemble``; ``external``) and ``finished: true`` that its ``oof.csv`` and
``test.csv`` are complete. Every writer of ``run.json`` builds a
:class:`RunRecord` with one of its constructors, which fix the keys and their
order (docs/formats.md lists them), and writes it with :func:`write_run_json`,
atomically; every reader goes through :func:`read_run_json`. The probability
files beside it belong to :mod:`kfold.stagefiles`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .io import KfError, ParamError, _json_default, atomic_write, read_json

RUN_JSON = "run.json"
#: the folder of ``kf ensemble``'s outputs under ``--oof``
ENSEMBLE_DIR = "ensemble"
#: folders under ``--oof`` that are never runs
NOT_RUNS = ("ensemble", "cache", "report", "eda")


class RunRecord:
    """The content of one ``run.json``: an ordered mapping of its keys, with the fields every stage reads.

    A thin wrapper, not a schema: each kind of folder records its own keys
    (docs/formats.md), in the order its constructor gives them, so
    :meth:`to_json` writes exactly the bytes kf has always written
    (``json.dumps(indent=2)`` plus a newline). Read keys with ``record["k"]``
    or ``record.get("k")``; change them with ``record["k"] = v`` or
    :meth:`update` (new keys go last).

    Args:
        fields: the keys in file order.
    """

    def __init__(self, fields: dict[str, Any] | None = None):
        self.fields: dict[str, Any] = dict(fields or {})

    # -- mapping access -----------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RunRecord):
            return self.fields == other.fields
        return isinstance(other, dict) and self.fields == other

    def __repr__(self) -> str:
        return f"RunRecord({self.fields!r})"

    def keys(self):
        return self.fields.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.fields.update(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A copy of the keys, in file order."""
        return dict(self.fields)

    # -- the fields every stage reads -----------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self.fields.get("name")

    @property
    def kind(self) -> str:
        """``run`` (the default when absent), ``ensemble`` or ``external``."""
        return self.fields.get("kind") or "run"

    @property
    def finished(self) -> bool:
        """True only when ``finished`` is the JSON ``true`` (a folder being written is not finished)."""
        return self.fields.get("finished") is True

    @property
    def folds_fingerprint(self) -> str | None:
        return self.fields.get("folds_fingerprint")

    @property
    def tta(self) -> Any:
        """A run's TTA (``none``/``hflip``/``flip``/``d4``), or per member / task for an ensemble or a combined run."""
        return self.fields.get("tta")

    @property
    def members(self) -> list[str]:
        """An ensemble's member names (``[]`` for a run)."""
        return list(self.fields.get("members") or [])

    @property
    def source_run(self) -> str | None:
        """The run a re-prediction with another TTA (``<run>@<tta>``) was made from; None otherwise."""
        return self.fields.get("source_run")

    # -- JSON -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The file's text: indented JSON in key order, numpy values as Python numbers, then a newline."""
        return json.dumps(self.fields, indent=2, sort_keys=False, default=_json_default) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str | Path = RUN_JSON) -> "RunRecord":
        """Parse :meth:`to_json`'s text.

        Raises:
            KfError: invalid JSON, or not a JSON object, naming ``source``.
        """
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise KfError(f"{source}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(obj, dict):
            raise KfError(f"{source}: expected a JSON object, found {type(obj).__name__}")
        return cls(obj)

    # -- constructors: one per writer, each fixing its keys and their order ----------------------------------
    @classmethod
    def trained(cls, name: str, config: dict, data: dict, folds_fingerprint: str, k: int, tta: str,
                train_age_cuts: list, versions: dict) -> "RunRecord":
        """A run ``kf train`` starts: no fold finished yet (``folds: {}``, ``finished: false``)."""
        return cls({"name": name, "kind": "run", "config": config, "data": data, "folds_fingerprint": folds_fingerprint,
                    "k": k, "tta": tta, "train_age_cuts": train_age_cuts, "versions": versions, "folds": {},
                    "finished": False})

    @classmethod
    def repredicted(cls, source: "RunRecord | dict", name: str, tta: str, oof_macro_f1: float) -> "RunRecord":
        """A finished run re-predicted with another TTA (``<run>@<tta>``, ``kf ensemble --tta``): the source's keys,
        then ``source_run``; ``folds`` emptied, ``config.tta`` set."""
        src = source.fields if isinstance(source, RunRecord) else source
        rec = cls({**src, "name": name, "tta": tta, "source_run": src["name"], "folds": {},
                   "oof_macro_f1": oof_macro_f1, "finished": True})
        rec["config"] = {**src["config"], "tta": tta}
        return rec

    @classmethod
    def combined(cls, name: str, combined_from: dict, folds_fingerprint: str, k: int, tta: dict, data: Any,
                 oof_macro_f1: float, oof_accuracy: float, oof_task_accuracy: dict, seconds: float) -> "RunRecord":
        """Three single-task runs joined by ``kf combine`` (no checkpoints of its own)."""
        return cls({"name": name, "kind": "run", "combined_from": combined_from, "folds_fingerprint": folds_fingerprint,
                    "k": k, "tta": tta, "data": data, "folds": {}, "oof_macro_f1": oof_macro_f1,
                    "oof_accuracy": oof_accuracy, "oof_task_accuracy": oof_task_accuracy, "seconds": seconds,
                    "finished": True})

    @classmethod
    def ensemble(cls, name: str, method: str, bias: bool, members: list[str], ensemble_json: str,
                 folds_fingerprint: str, k: int, tta: dict, oof_macro_f1: float, nested_macro_f1: float,
                 holdout_macro_f1: float | None = None) -> "RunRecord":
        """A blend written by ``kf ensemble`` (``ensemble/<name>/run.json``)."""
        rec = cls({"name": name, "kind": "ensemble", "method": method, "bias": bias, "members": members,
                   "ensemble_json": ensemble_json, "folds_fingerprint": folds_fingerprint, "k": k, "tta": tta,
                   "oof_macro_f1": oof_macro_f1, "nested_macro_f1": nested_macro_f1, "finished": True})
        if holdout_macro_f1 is not None:
            rec["holdout_macro_f1"] = holdout_macro_f1
        return rec

    @classmethod
    def best(cls, name: str, chosen: str, chosen_kind: str, members: list[str], folds_fingerprint: str, k: int,
             tta: dict, oof_macro_f1: float, nested_macro_f1: float, pooled_macro_f1: float, pooled_sd: float,
             select_on: str, selection_score: float, reason: str, holdout_macro_f1: float | None = None,
             holdout_sd: float | None = None) -> "RunRecord":
        """``ensemble/best``: the option ``kf ensemble`` chose, and why."""
        rec = cls({"name": name, "kind": "ensemble", "chosen": chosen, "chosen_kind": chosen_kind, "members": members,
                   "folds_fingerprint": folds_fingerprint, "k": k, "tta": tta, "oof_macro_f1": oof_macro_f1,
                   "nested_macro_f1": nested_macro_f1, "pooled_macro_f1": pooled_macro_f1, "pooled_sd": pooled_sd,
                   "select_on": select_on, "selection_score": selection_score, "reason": reason, "finished": True})
        if holdout_macro_f1 is not None:
            rec.update(holdout_macro_f1=holdout_macro_f1, holdout_sd=holdout_sd)
        return rec

    @classmethod
    def external(cls, name: str, who: str | None, where: str | None, imported_at: str, sources: dict,
                 softmax_applied: bool, columns: Any, test_files: int, test_ids_from: str, data: dict,
                 folds_fingerprint: str, k: int, oof_macro_f1: float, oof_accuracy: float,
                 versions: dict) -> "RunRecord":
        """Predictions made elsewhere, written by ``kf import`` (``kind: external``, ``tta: null``)."""
        return cls({"name": name, "kind": "external", "who": who, "where": where, "imported_at": imported_at,
                    "sources": sources, "softmax_applied": softmax_applied, "columns": columns,
                    "test_files": test_files, "test_ids_from": test_ids_from, "data": data,
                    "folds_fingerprint": folds_fingerprint, "k": k, "tta": None, "oof_macro_f1": oof_macro_f1,
                    "oof_accuracy": oof_accuracy, "versions": versions, "finished": True})

    @classmethod
    def synthetic(cls, name: str, config: dict, folds_fingerprint: str, k: int, tta: str = "none") -> "RunRecord":
        """A finished run of :mod:`ensemble.synth` (noisy softmax of the labels, for tests and benchmarks)."""
        return cls({"name": name, "config": config, "folds_fingerprint": folds_fingerprint, "k": k, "tta": tta,
                    "finished": True})


def run_json_path(run_dir: str | Path) -> Path:
    """``<run_dir>/run.json``."""
    return Path(run_dir) / RUN_JSON


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a ``run.json`` (a run, an ensemble or an import)."""
    return run_json_path(path).is_file()


def read_run_json(run_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of ``<run_dir>/run.json``.

    Raises:
        KfError: the file is missing, not valid JSON, or not a JSON object (naming it).
    """
    path = run_json_path(run_dir)
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise KfError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return RunRecord(obj)


def write_run_json(record: RunRecord | dict, run_dir: str | Path) -> Path:
    """Write ``record`` as ``<run_dir>/run.json``, atomically (:func:`kfold.io.atomic_write`): the one writer.

    Returns:
        The path written.

    Raises:
        KfError: the file cannot be written.
    """
    rec = record if isinstance(record, RunRecord) else RunRecord(record)
    path = run_json_path(run_dir)
    with atomic_write(path) as fh:
        fh.write(rec.to_json())
    return path


# --------------------------------------------------------------------------- listing and resolving

def _require_folder(oof_dir: Path) -> None:
    if not oof_dir.is_dir():
        raise ParamError(f"{oof_dir}: folder not found (pass {{oof_dir}}, or train runs with kf train first)", "oof_dir")


def run_dirs(oof_dir: str | Path) -> list[Path]:
    """The folders directly under ``oof_dir`` holding a ``run.json``, sorted by name (``ensemble/``, ``cache/``,
    ``report/``, ``eda/`` and hidden folders skipped).

    Raises:
        ParamError: ``oof_dir`` is not a folder.
    """
    oof_dir = Path(oof_dir)
    _require_folder(oof_dir)
    return [d for d in sorted(oof_dir.iterdir())
            if d.is_dir() and d.name not in NOT_RUNS and not d.name.startswith(".") and is_run_dir(d)]


def ensemble_dirs(oof_dir: str | Path) -> list[Path]:
    """The folders under ``<oof_dir>/ensemble/`` holding a ``run.json`` (blends and ``best``), sorted."""
    ens = Path(oof_dir) / ENSEMBLE_DIR
    return [d for d in sorted(ens.iterdir()) if d.is_dir() and is_run_dir(d)] if ens.is_dir() else []


def discover_runs(oof_dir: str | Path) -> tuple[list[str], list[str]]:
    """Names of the finished and of the unfinished runs directly under ``oof_dir`` (what ``kf ensemble`` blends).

    Re-predictions of a run with another TTA (``<run>@<tta>``, whose run.json
    has ``source_run``) are left out: name them to use them. Names are sorted.

    Raises:
        ParamError: ``oof_dir`` does not exist. KfError: a ``run.json`` is unreadable.
    """
    finished, unfinished = [], []
    for d in run_dirs(oof_dir):
        rec = read_run_json(d)
        if rec.source_run:
            continue
        (finished if rec.finished else unfinished).append(d.name)
    return finished, unfinished


def finished_names(oof_dir: str | Path) -> list[str]:
    """Names of every finished run (re-predictions included), then of every finished ensemble (``ensemble/<name>``).

    Raises:
        ParamError: ``oof_dir`` does not exist. KfError: a ``run.json`` is unreadable.
    """
    runs = [d.name for d in run_dirs(oof_dir) if read_run_json(d).finished]
    return runs + [f"{ENSEMBLE_DIR}/{d.name}" for d in ensemble_dirs(oof_dir) if read_run_json(d).finished]


def resolve_run_dir(name: str, oof_dir: str | Path) -> Path:
    """Folder of run or ensemble ``name``: ``<oof_dir>/<name>`` (``lite0``, ``ensemble/best``), else ``name`` as a path.

    Raises:
        KfError: neither holds a ``run.json``; the message lists the finished runs and ensembles under ``oof_dir``.
    """
    oof_dir = Path(oof_dir)
    for d in (oof_dir / name, Path(name)):
        if is_run_dir(d):
            return d
    have = ", ".join(finished_names(oof_dir)) if oof_dir.is_dir() else f"{oof_dir} not found"
    raise KfError(f"{name}: not a run or ensemble under {oof_dir} (no {run_json_path(oof_dir / name)}; "
                  f"finished there: {have or 'none'})")


def list_sources(oof_dir: str | Path) -> list[str]:
    """Names with a ``test.csv`` under ``oof_dir``: runs (``lite0``), then ensembles (``ensemble/caruana``)."""
    oof_dir = Path(oof_dir)
    if not oof_dir.is_dir():
        return []
    runs = sorted(p.parent.name for p in oof_dir.glob("*/test.csv") if p.parent.name != ENSEMBLE_DIR)
    ens = sorted(f"{ENSEMBLE_DIR}/{p.parent.name}" for p in oof_dir.glob(f"{ENSEMBLE_DIR}/*/test.csv"))
    return runs + ens


def resolve_test_csv(source: str, oof_dir: str | Path = "oof") -> Path:
    """The ``test.csv`` that ``source`` names.

    * ``source`` ending in ``.csv``: that file;
    * otherwise ``<oof_dir>/<source>/test.csv`` (a run such as ``lite0`` or an
      ensemble such as ``ensemble/caruana``);
    * otherwise ``<source>/test.csv`` (a run folder given by its path).

    Raises:
        ParamError: none of these is a file; the message lists what ``oof_dir`` holds.
    """
    p = Path(source)
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise ParamError(f"{{source}} {source}: file not found", "source")
        return p
    cand = Path(oof_dir) / source / "test.csv"
    if cand.is_file():
        return cand
    if (p / "test.csv").is_file():
        return p / "test.csv"
    if cand.parent.is_dir():
        raise ParamError(f"{{source}} {source}: {cand} not found (a run writes test.csv only when every fold has finished)",
                         "source")
    available = list_sources(oof_dir)
    hint = (f"available in {oof_dir}: {', '.join(available)}" if available
            else f"{oof_dir}: folder not found; check {{oof_dir}}, or pass a path to a test.csv" if not Path(oof_dir).is_dir()
            else f"{oof_dir} holds no run or ensemble with a test.csv; pass {{oof_dir}}, or a path to a test.csv")
    raise ParamError(f"{{source}} {source}: {cand} not found ({hint})", "source", "oof_dir")
