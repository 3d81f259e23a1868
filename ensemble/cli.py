"""click commands of the ``ensemble`` stage: ``kf ensemble`` and ``kf predict`` (thin wrappers)."""
from __future__ import annotations

from pathlib import Path

import click

from kfold.options import data_option, oof_option, track_option

METHOD_CHOICES = ("all", "soft", "geo", "weights", "caruana", "stacking")
TTA_CHOICES = ("none", "hflip", "flip", "d4")


@click.command("ensemble")
@data_option
@oof_option
@click.option("--method", type=click.Choice(METHOD_CHOICES), default="caruana", show_default=True,
              help="soft voting, geometric mean, simplex weights (log-loss), Caruana selection (macro F1), "
                   "stacking (logistic regression), or all of them.")
@click.option("--bias", is_flag=True, help="Also tune per-class biases on log-probabilities for OOF macro F1 (writes <name>+bias).")
@click.option("--runs", default=None, metavar="A,B",
              help="Runs to blend, names under --oof (e.g. effb0,mnv3; runs, not ensembles). Default: every finished run.")
@click.option("--name", default=None, help="Output name instead of the method's (one method only; 'best' is reserved).")
@click.option("--overwrite", is_flag=True,
              help="Replace an ensemble of the same name that blends other runs (refused otherwise; same runs are refitted).")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default=None,
              help="Re-predict each member's OOF and test sets from its fold checkpoints with this TTA "
                   "(into <oof>/<run>@<tta>/, reused when present) and blend those. Needs --data.")
@track_option
def ensemble_cmd(data, oof, method, bias, runs, name, overwrite, tta, track):
    """Blend runs on their OOF probabilities; report single-run vs ensemble macro F1.

    Every method is scored twice: in-sample on all OOF rows, and nested (per
    fold, fitted on the other folds only), the honest estimate to compare
    with a single run. Writes <oof>/ensemble/<name>.json, <name>/oof.csv,
    <name>/test.csv (a run's format) and <label>_scores.csv; <name> is the
    method or --name, plus "+bias" (<label>: the method, "all" with --method
    all, or --name, plus "+bias"). --data is only read to check test.csv
    ImageIDs against eval/info.csv.

    Every call also updates <oof>/ensemble/best/, the member or blend with
    the highest nested macro F1, unless the existing best (same folds) scores
    higher: submit it with --from ensemble/best.

    \b
    Examples:
      kf ensemble --oof oof --method caruana --bias
      kf ensemble --oof oof --method all --runs effb0,mnv3,lite0
      kf submit --data data --from ensemble/caruana+bias --out submission.csv
    """
    from kfold import tracking

    from .pipeline import format_table, run_ensemble

    track = tracking.wanted(track)
    names = [r.strip() for r in runs.split(",") if r.strip()] if runs is not None else None
    if names == []:
        raise click.BadParameter("empty; name runs (lite0,mnv3) or leave --runs out for every finished run",
                                 param_hint="--runs")
    info = Path(data) / "eval" / "info.csv"
    if not info.is_file():
        click.echo(f"note: {info} not found; test.csv ImageIDs are checked between runs only")
        info = None
    if tta is not None:
        names = with_tta(oof, data, names, tta)
    report = run_ensemble(oof, method=method, runs=names, bias=bias, name=name, info_csv=info, overwrite=overwrite)
    rs = report.runs
    click.echo(f"{len(rs.names)} run(s): {', '.join(rs.names)}; {rs.oof.shape[1]} OOF images, "
               f"{rs.test.shape[1]} test images, K={rs.k}"
               + (f"; skipped unfinished: {', '.join(rs.skipped)}" if rs.skipped else ""))
    click.echo(format_table(report.table))
    click.echo("oof_macro_f1: in-sample on all OOF rows; nested_macro_f1: mean over folds of a fit "
               "without that fold, scored on it (for a run: its per-fold OOF macro F1)")
    ens = Path(oof) / "ensemble"
    for f in report.fitted:
        click.echo(f"wrote {ens / f.name}.json and {ens / f.name}/{{oof.csv,test.csv,run.json}}")
    for r in report.replaced:
        click.echo(f"replaced (--overwrite) the earlier {r}")
    scores_csv = next(p for p in report.written if p.name.endswith("_scores.csv"))
    if track:
        tracking.log_ensemble(oof, report, scores_csv.name[:-len("_scores.csv")], method, bias)
    click.echo(f"wrote {scores_csv}")
    best = report.table.loc[report.table["nested_macro_f1"].idxmax()]
    click.echo(f"best by nested macro F1: {best['name']} ({best['kind']}, nested {best['nested_macro_f1']:.4f}, "
               f"in-sample {best['oof_macro_f1']:.4f})")
    kept = report.best
    if report.best_kept:
        click.echo(f"kept {ens / 'best'}/: {kept['chosen']} of {','.join(kept['members'])} from an earlier call has a higher "
                   f"nested macro F1 ({kept['nested_macro_f1']:.4f}); delete that folder to replace it")
    else:
        click.echo(f"wrote {ens / 'best'}/ (submit it with --from ensemble/best)")


def with_tta(oof: str, data: str, names: list[str] | None, tta: str) -> list[str]:
    """Member names after re-predicting each with ``tta`` (see ``kfold.inference.repredict_run``)."""
    from kfold.inference import repredict_run
    from kfold.io import read_json

    from .runs import discover_runs, resolve_run_dir

    names = names if names is not None else discover_runs(oof)[0]
    out = []
    for n in names:
        run_dir = resolve_run_dir(n, oof)
        meta = read_json(run_dir / "run.json")
        if meta.get("tta") == tta:
            out.append(n)
            continue
        target = run_dir.parent / f"{meta.get('source_run') or run_dir.name}@{tta}"
        done = (target / "run.json").is_file() and read_json(target / "run.json").get("finished")
        if not done:
            click.echo(f"{n}: re-predicting OOF and test with TTA {tta} from its fold checkpoints")
            repredict_run(run_dir, data, tta, target, echo=click.echo)
        out.append(target.name)
    return out


@click.command("predict")
@click.argument("run_or_ensemble")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="Folder of images to predict.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output CSV: ImageID,prob_0..prob_17.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default=None,
              help="Test-time augmentation for every run. Default: each run's own, from its run.json.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Inputs per forward pass, TTA views included.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never done otherwise).")
@oof_option
def predict_cmd(run_or_ensemble, images, out, tta, batch_size, overwrite, oof):
    """Apply a run or an ensemble (RUN_OR_ENSEMBLE, a name under --oof) to a folder of images.

    \b
    Examples:
      kf predict effb0 --images data/eval/images --out effb0_eval.csv --tta flip
      kf predict ensemble/caruana+bias --images data/eval/images --out blend_eval.csv
    """
    from kfold.io import check_writable

    from .predict import predict_dir, write_predictions
    from .runs import resolve_run_dir

    check_writable(out, overwrite=overwrite)  # before the work: an existing file is never replaced without --overwrite
    run_dir = resolve_run_dir(run_or_ensemble, oof)
    ids, probs = predict_dir(run_dir, images, tta=tta, batch_size=batch_size)
    write_predictions(ids, probs, out)
    click.echo(f"wrote {out}: {len(ids)} images, {run_or_ensemble}" + (f", tta={tta}" if tta else ", each run's own tta"))
