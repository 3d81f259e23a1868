"""The method registry: names used by ``kf ensemble --method``, and JSON (de)serialisation.

A fitted method is stored as plain JSON (never pickle) by :func:`to_state`
and rebuilt by :func:`from_state`, which is what ``kf predict`` does with an
ensemble JSON.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from kfold.io import KfError, ParamError

from .base import Ensembler, Scorer, get_scorer, scorer_name
from .bias import BiasTuning
from .caruana import CaruanaSelection
from .stacking import Stacking
from .voting import GeometricMean, SoftVoting
from .weights import OptimizedWeights

METHODS: dict[str, type[Ensembler]] = {
    "soft": SoftVoting,
    "geo": GeometricMean,
    "weights": OptimizedWeights,
    "caruana": CaruanaSelection,
    "stacking": Stacking,
}
BIAS_SUFFIX = "+bias"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_method(method: str, allow_all: bool = False) -> None:
    """Raise unless ``method`` is a key of :data:`METHODS` (or ``all`` with ``allow_all``).

    Raises:
        ParamError: ``method 'x': unknown, expected one of <the keys of METHODS>[ or all]``.
    """
    if method not in METHODS and not (allow_all and method == "all"):
        raise ParamError(f"{{method}} {method!r}: unknown, expected one of {', '.join(METHODS)}"
                         + (" or all" if allow_all else ""), "method")


def make_method(method: str, bias: bool = False, scorer: Scorer | None = None, **params: Any) -> Ensembler:
    """A new, unfitted method by name, wrapped in :class:`BiasTuning` when ``bias``.

    Args:
        method: a key of :data:`METHODS` (``soft``, ``caruana``, ...).
        bias: add per-class bias tuning on top.
        scorer: ``(y_true, y_pred) -> float`` for the methods that fit to a
            metric (Caruana selection, bias tuning); None for macro F1.
        **params: hyper-parameters of the method (e.g. ``n_iterations=50``).

    Raises:
        ParamError: unknown method name.
    """
    check_method(method)
    cls = METHODS[method]
    if scorer is not None and "scorer" in cls._get_param_names():
        params = {**params, "scorer": scorer}
    est = cls(**params)
    return BiasTuning(est, scorer=scorer) if bias else est


def ensemble_name(base: str, bias: bool) -> str:
    """Output name of a method: ``caruana``, ``caruana+bias`` (``base`` is the method or ``--name``).

    Raises:
        ParamError: ``base`` is not a plain file name (letters, digits, ``_ . + -``),
            or is ``best``, the folder ``kf ensemble`` keeps the best-scoring blend in.
    """
    if not _NAME_RE.match(base):
        raise ParamError(f"{{name}} {base!r}: use letters, digits and _ . + - only (it names a file and a folder)", "name")
    if base == "best":
        raise ParamError("{name} 'best' is reserved: ensemble/best holds the member or blend with the highest nested "
                         "macro F1 of every call; choose another name", "name")
    return base + (BIAS_SUFFIX if bias else "")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fitted(est: Ensembler) -> dict[str, Any]:
    skip = {"oof_proba_", "estimator_", "weights_"}
    return {k: _jsonable(v) for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_") and k not in skip}


def to_state(est: Ensembler) -> dict[str, Any]:
    """JSON-ready description of a fitted method.

    Returns:
        ``{"method", "bias", "params", "bias_params", "weights", "biases", "fitted"}`` (``params`` holds
        ``scorer`` as ``"module:function"`` only when it is not the default macro F1):
        ``weights`` is the ``(n_runs,)`` blend weights (None for stacking),
        ``biases`` the ``(18,)`` log-probability biases (None without
        ``--bias``), ``fitted`` every other learned attribute (stacking's
        ``coef_``, ``intercept_``, ``classes_``; Caruana's ``trajectory_``...).
    """
    bias = isinstance(est, BiasTuning)
    base = est.estimator_ if bias else est
    name = next(k for k, cls in METHODS.items() if type(base) is cls)
    return {
        "method": name,
        "bias": bias,
        "params": _params(base),
        "bias_params": {"grid": _jsonable(est.grid), "n_passes": est.n_passes} if bias else None,
        "weights": _jsonable(getattr(base, "weights_", None)),
        "biases": _jsonable(est.biases_) if bias else None,
        "fitted": _fitted(base),
    }


def _params(est: Ensembler) -> dict[str, Any]:
    params = _jsonable(est.get_params())
    if "scorer" in params:
        name = scorer_name(params.pop("scorer"))
        if name is not None:
            params["scorer"] = name
    return params


def from_state(state: dict[str, Any]) -> Ensembler:
    """Rebuild a fitted method from :func:`to_state` output (e.g. the ensemble JSON).

    Raises:
        KfError: unknown method or missing fields.
    """
    try:
        params = dict(state.get("params", {}))
        if params.get("scorer") is not None:
            params["scorer"] = get_scorer(params["scorer"])
        base = make_method(state["method"], **params)
        if state.get("weights") is not None:
            base.weights_ = np.asarray(state["weights"], dtype=np.float64)
        for k, v in state.get("fitted", {}).items():
            setattr(base, k, np.asarray(v) if isinstance(v, list) else v)
        if not state.get("bias"):
            return base
        bp = state.get("bias_params") or {}
        est = BiasTuning(base, grid=tuple(bp.get("grid", ())), n_passes=bp.get("n_passes", 3))
        est.estimator_ = base
        est.biases_ = np.asarray(state["biases"], dtype=np.float64)
        return est
    except (KeyError, TypeError) as e:
        raise KfError(f"ensemble JSON: missing or bad field {e}") from None
