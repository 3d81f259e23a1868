"""click commands ``kf eda`` and ``kf report``: thin wrappers over :mod:`reports.eda` and :mod:`reports.report`."""
from __future__ import annotations

from pathlib import Path

import click

from kfold.options import data_option, oof_option, parse_age_cuts


def _label_options(f):
    """``--age-cuts`` and ``--corrections`` as in ``kf folds``/``kf train`` (without ``--k``/``--folds-seed``)."""
    f = click.option("--corrections", type=click.Path(dir_okay=False), default=None,
                     help="Label-corrections CSV (path,field,value), applied before counting.")(f)
    f = click.option("--age-cuts", default="30,60", show_default=True, callback=parse_age_cuts,
                     help="Age band cut-offs in years: <A, A..B-1, >=B.")(f)
    return f


def check_out(out: str | None, data: str | None, oof: str | None = None) -> None:
    """Refuse an ``--out`` inside the competition folder (``--data``) or equal to the ``--oof`` folder itself.

    Reports there would mix with the images (and every later read would warn
    about the unexpected files) or scatter among the run folders.

    Raises:
        click.BadParameter: one line naming ``--out`` and the folder it is inside.
    """
    if out is None:
        return
    where = Path(out).resolve()
    if data is not None and Path(data).is_dir() and where.is_relative_to(Path(data).resolve()):
        raise click.BadParameter(f"{out} is inside the competition folder {data}; choose a folder outside it",
                                 param_hint="--out")
    if oof is not None and where == Path(oof).resolve():
        raise click.BadParameter(f"{out} is the --oof folder itself; choose a folder of its own (default: "
                                 f"{Path(oof) / 'report'})", param_hint="--out")


@click.command("eda")
@data_option
@click.option("--out", type=click.Path(file_okay=False), default="eda", show_default=True,
              help="Folder for the tables (CSV), plots (PNG) and index.html.")
@_label_options
def eda_cmd(data, out, age_cuts, corrections):
    """Count people and images per class, task, race, age, file type and size; find junk; plot.

    Writes one CSV per table, class_distribution.png, age_histogram.png and a
    self-contained index.html into OUT (docs/reports.md).

    \b
    Example:
      kf eda --data ../shared/maskfaces --out eda --age-cuts 30,58
    """
    from .eda import eda_tables, format_summary, write_eda

    check_out(out, data)
    result = eda_tables(data, age_cuts, corrections)
    written = write_eda(result, out)
    click.echo(format_summary(result))
    click.echo(f"wrote {len(written)} files to {out}/ (open {Path(out) / 'index.html'})")


@click.command("report")
@click.argument("names", nargs=-1, metavar="[RUN_OR_ENSEMBLE]...")
@oof_option
@data_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder  [default: OOF/report]")
@click.option("--top", default=24, show_default=True,
              help="Images on each contact sheet of confident errors (0: none; then no --data is needed).")
def report_cmd(names, oof, data, out, top):
    """Per-class F1, confusion matrices, per-fold scores, training curves and confident errors.

    With no names, reports every finished run and ensemble under --oof. When
    --data is not given and data/ does not exist, the contact sheet reads the
    images from the data root a run recorded in its run.json.

    \b
    Example:
      kf report --oof oof                                # everything finished
      kf report lite0 ensemble/caruana --data ../shared/maskfaces --out report
    """
    from .report import format_summary, run_report

    src = click.get_current_context().get_parameter_source("data")
    if src is not None and src.name == "DEFAULT" and not Path(data).is_dir():
        data = None  # fall back to the run's recorded data root
    check_out(out, data, oof)
    reports, written = run_report(list(names), oof, out=out, data_root=data, top=top)
    click.echo(format_summary(reports))
    out_dir = Path(out) if out is not None else Path(oof) / "report"
    click.echo(f"wrote {len(written)} files to {out_dir}/ (open {out_dir / 'index.html'})")
