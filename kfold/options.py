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


@contextlib.contextmanager
def flag_errors(**flags: str) -> Iterator[None]:
    """Reword a library's :class:`kfold.io.ParamError` with the command's flags (``method="--method"``).

    Library functions name their parameters in errors (``method 'x': unknown``);
    inside this block the same error reads ``--method 'x': unknown``.
    """
    try:
        yield
    except ParamError as e:
        raise e.for_flags(flags) from None
