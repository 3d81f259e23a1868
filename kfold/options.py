"""Options shared by every kf command (``--data``, ``--oof``) and data-label settings."""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import click

from .io import ParamError

data_option = click.option(
    "--data", "data", type=click.Path(file_okay=False), default=lambda: os.environ.get("KF_DATA", "data"),
    show_default="$KF_DATA or data/", help="Competition folder holding train/ and eval/.")
oof_option = click.option(
    "--oof", "oof", type=click.Path(file_okay=False), default="oof", show_default=True,
    help="Folder of stage files (folds, runs, ensembles); one per experiment.")


def parse_age_cuts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected two numbers like 30,60") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise click.BadParameter("expected two finite ages in years like 30,60")
    if not a < b:
        raise click.BadParameter("the first cut must be below the second")
    return a, b


def check_holdout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # nan passes FloatRange
        raise click.BadParameter("expected a fraction of the people in [0, 1), e.g. 0.2")
    return value


def label_options(f):
    """``--age-cuts``, ``--corrections``, ``--k``, ``--folds-seed`` and ``--holdout``: what defines labels and folds."""
    f = click.option("--holdout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     callback=check_holdout, help="Share of the people withheld from every fold as a local holdout (e.g. 0.2): "
                          "predicted like the test set, scored beside every estimate, never fitted on.")(f)
    f = click.option("--folds-seed", default=42, show_default=True, help="random_state of StratifiedGroupKFold.")(f)
    f = click.option("--k", default=5, show_default=True, type=click.IntRange(min=2), help="Number of folds.")(f)
    f = click.option("--corrections", type=click.Path(dir_okay=False), default=None,
                     help="Label-corrections CSV (path,field,value), applied before anything else.")(f)
    f = click.option("--age-cuts", default="30,60", show_default=True, callback=parse_age_cuts,
                     help="Age band cut-offs in years: <A, A..B-1, >=B (58 is a common second cut).")(f)
    return f


track_option = click.option(
    "--track/--no-track", "track", default=None,
    help="Log to MLflow (MLFLOW_TRACKING_URI, else MLflow's local default; pip install -e '.[track]'; "
         "docs/tracking.md). Default: KF_TRACK=1 (kf train: also a config's track: true).")


#: library parameter -> the click parameter that passes it, where the two names differ in every command
#: (used by :func:`command_flags`; a difference in one command only is a :func:`flag_errors` block there)
PARAM_ALIASES = {"oof_dir": "oof", "data_root": "data", "root": "data"}


def command_flags(cmd: click.Command) -> dict[str, str]:
    """How ``cmd`` spells each library parameter in an error: the map :meth:`kfold.io.ParamError.render` takes.

    Each click option's parameter name -> its first long flag (``k`` ->
    ``--k``, ``select_on`` -> ``--select-on``, ``overrides`` -> ``--set``,
    ``source`` -> ``--from``), each argument's name -> its metavar (``name`` ->
    ``NAME``), and each :data:`PARAM_ALIASES` entry whose click parameter
    ``cmd`` has (``oof_dir`` -> ``--oof``). ``kf``'s group renders every
    :class:`kfold.io.ParamError` a command raises with this map (``kf/cli.py``).
    """
    flags: dict[str, str] = {}
    for p in cmd.params:
        if isinstance(p, click.Argument):
            flags[p.name] = p.human_readable_name
        elif longs := [o for o in p.opts if o.startswith("--")]:
            flags[p.name] = longs[0]
    return {**{lib: flags[name] for lib, name in PARAM_ALIASES.items() if name in flags}, **flags}


@contextlib.contextmanager
def flag_errors(**flags: str) -> Iterator[None]:
    """Reword a library's :class:`kfold.io.ParamError` with flags of this call only (``runs="--run"``).

    For a library parameter that one command passes from an option of
    another name (``kf export --run`` passes ``export_files(run=...)``, whose
    errors name ``runs``); everything else is rendered by the ``kf`` group with
    :func:`command_flags`. Inside this block ``runs 'x': ...`` reads
    ``--run 'x': ...``; parameters not in ``flags`` stay for the group to render.
    """
    try:
        yield
    except ParamError as e:
        raise e.for_flags(flags) from None
