"""click commands of the ``ensemble`` stage: ``kf ensemble`` and ``kf predict`` (thin wrappers)."""
from __future__ import annotations

from pathlib import Path

import click

from kfold.labels import N_CLASSES
from kfold.options import data_option, flag_errors, oof_option, track_option

from .methods import METHODS

#: --method choices: the registry (ensemble.methods.METHODS) and "all"
METHOD_CHOICES = ("all", *METHODS)
#: --method help: each method's name and the first line of its class docstring
METHOD_HELP = "; ".join(f"{k}: {cls.__doc__.strip().splitlines()[0].rstrip('.').replace('``', '')}"
                        for k, cls in METHODS.items()) + "; or all of them."
TTA_CHOICES = ("none", "hflip", "flip", "d4")


@click.command("ensemble")
@data_option
@oof_option
@click.option("--method", type=click.Choice(METHOD_CHOICES), default="caruana", show_default=True,
              help=METHOD_HELP)
@click.option("--bias", is_flag=True, help="Also tune per-class biases on log-probabilities for OOF macro F1 (writes <name>+bias).")
@click.option("--runs", default=None, metavar="A,B",
              help="Runs to blend, names under --oof (e.g. effb0,mnv3; runs, not ensembles). Default: every finished run.")
@click.option("--name", default=None, help="Output name instead of the method's (one method only; 'best' is reserved).")
@click.option("--overwrite", is_flag=True,
              help="Replace an ensemble of the same name that blends other runs (refused otherwise; same runs are refitted).")
@click.option("--select-on", type=click.Choice(["estimate", "holdout"]), default="estimate", show_default=True,
              help="What chooses ensemble/best: the pooled nested estimate, or the local holdout (kf folds --holdout; "
                   "the holdout then stops being an unbiased check of the choice).")
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=0.9, show_default=True,
              help="A blend replaces the best single run only if it beats it in this share of person-bootstrap resamples.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default=None,
              help="Re-predict each member's OOF and test sets from its fold checkpoints with this TTA "
                   "(into <oof>/<run>@<tta>/, reused when present) and blend those. Needs --data.")
@track_option
def ensemble_cmd(data, oof, method, bias, runs, name, overwrite, select_on, confidence, tta, track):
    """Blend runs on their OOF probabilities; report single-run vs ensemble macro F1.

    Every method is scored twice: in-sample on all OOF rows, and nested (per
    fold, fitted on the other folds only), the honest estimate to compare
    with a single run. Writes <oof>/ensemble/<name>.json, <name>/oof.csv,
    <name>/test.csv (a run's format) and <label>_scores.csv; <name> is the
    method or --name, plus "+bias" (<label>: the method, "all" with --method
    all, or --name, plus "+bias"). --data is only read to check test.csv
    ImageIDs against eval/info.csv.

    Every call also updates <oof>/ensemble/best/: the best single run, or a
    blend that beats it in at least --confidence of person-bootstrap
    resamples of the pooled nested estimate (the highest such), unless the
    existing best (same folds) scores higher: submit it with --from
    ensemble/best. With a local holdout (kf folds --holdout 0.2) every option
    is also scored on it, predicted like the test set.

    \b
    Examples:
      kf ensemble --oof oof --method caruana --bias
      kf ensemble --oof oof --method all --runs effb0,mnv3,lite0
      kf submit --data data --from ensemble/caruana+bias --out submission.csv
    """
    from kfold import tracking

    from .pipeline import run_ensemble
    from .scores import format_table

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
    report = run_ensemble(oof, method=method, runs=names, bias=bias, name=name, info_csv=info, overwrite=overwrite,
                          select_on=select_on, confidence=confidence)
    rs = report.runs
    click.echo(f"{len(rs.names)} run(s): {', '.join(rs.names)}; {rs.oof.shape[1]} OOF images, "
               f"{rs.test.shape[1]} test images, K={rs.k}"
               + (f"; skipped unfinished: {', '.join(rs.skipped)}" if rs.skipped else ""))
    click.echo(format_table(report.table))
    click.echo("oof_macro_f1: in-sample on all OOF rows (optimistic for fitted blends); nested_macro_f1: mean over "
               "folds of a fit without that fold, scored on it; pooled_macro_f1: those nested predictions pooled and "
               "scored once (the selection estimate; for a run: its OOF macro F1); _sd: person-bootstrap standard "
               "deviation; _p_better: share of paired resamples beating the best single run"
               + ("; holdout_macro_f1: the local holdout, predicted like the test set, never fitted on" if
                  "holdout_macro_f1" in report.table else ""))
    ens = Path(oof) / "ensemble"
    for f in report.fitted:
        click.echo(f"wrote {ens / f.name}.json and {ens / f.name}/{{oof.csv,test.csv,run.json}}")
    for r in report.replaced:
        click.echo(f"replaced (--overwrite) the earlier {r}")
    scores_csv = next(p for p in report.written if p.name.endswith("_scores.csv"))
    if track:
        tracking.log_ensemble(oof, report, scores_csv.name[:-len("_scores.csv")], method, bias)
    click.echo(f"wrote {scores_csv}")
    click.echo(f"chosen ({'by the holdout' if report.choice.on == 'holdout' else 'by the pooled nested estimate'}): "
               f"{report.choice.reason}")
    kept = report.best
    if report.best_kept:
        click.echo(f"kept {ens / 'best'}/: {kept['chosen']} of {','.join(kept['members'])} from an earlier call has a higher "
                   f"selection score ({kept['selection_score']:.4f}); delete that folder to replace it")
    else:
        click.echo(f"wrote {ens / 'best'}/ (submit it with --from ensemble/best)")


def with_tta(oof: str, data: str, names: list[str] | None, tta: str) -> list[str]:
    """Member names after re-predicting each with ``tta`` (see ``kfold.inference.repredict_run``)."""
    from kfold.locks import stage_lock
    from kfold.runrecord import discover_runs, is_run_dir, read_run_json, resolve_run_dir

    from .external import refuse_external

    names = names if names is not None else discover_runs(oof)[0]
    for n in names:  # before any re-prediction (and before importing torch)
        refuse_external(resolve_run_dir(n, oof), "kf ensemble --tta",
                        f"blend it as it is: kf ensemble --tta {tta} --runs <trained runs>, then --runs <run>@{tta},{n}")
    from kfold.inference import repredict_run

    out = []
    for n in names:
        run_dir = resolve_run_dir(n, oof)
        meta = read_run_json(run_dir)
        if meta.tta == tta:
            out.append(n)
            continue
        target = run_dir.parent / f"{meta.get('source_run') or run_dir.name}@{tta}"
        with stage_lock(target, click.echo):  # two calls: the later one finds the re-prediction done
            done = is_run_dir(target) and read_run_json(target).finished
            if not done:
                if not Path(data).is_dir():  # before minutes of model loading: one line naming the flag
                    raise click.BadParameter(f"{data}: data folder not found; --tta re-predicts {n} from the train and "
                                             "eval images", param_hint="--data")
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
    from kfold.images import extensions_text, list_images
    from kfold.io import check_can_write
    from kfold.runrecord import resolve_run_dir

    from .predict import predict_dir, write_predictions

    check_can_write(out, overwrite=overwrite)  # before the work: writable, and never replaced without --overwrite
    run_dir = resolve_run_dir(run_or_ensemble, oof)
    if Path(images).is_dir():
        skipped = list_images(images)[1]
        if skipped:
            click.echo(f"warning: {images}: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} that "
                       f"{'is' if len(skipped) == 1 else 'are'} not an image kf reads ({extensions_text()}): "
                       + ", ".join(p.name for p in skipped[:5]) + (f", ... ({len(skipped) - 5} more)" if len(skipped) > 5 else ""),
                       err=True)
    ids, probs = predict_dir(run_dir, images, tta=tta, batch_size=batch_size)
    write_predictions(ids, probs, out)
    click.echo(f"wrote {out}: {len(ids)} images, {run_or_ensemble}" + (f", tta={tta}" if tta else ", each run's own tta"))


@click.command("import")
@click.argument("name")
@click.option("--oof-csv", "oof_csv", required=True, type=click.Path(dir_okay=False),
              help=f"OOF predictions: image, fold, {N_CLASSES} class columns (one row per folds.csv image, any order).")
@click.option("--test-csv", "test_csvs", required=True, multiple=True, type=click.Path(dir_okay=False),
              help=f"Test predictions: ImageID, {N_CLASSES} class columns (any order); repeat once per fold to average per-fold files.")
@click.option("--logits", is_flag=True, help="The class columns are logits: apply a softmax (recorded in run.json).")
@click.option("--columns", default=None, metavar=f"C0,..,C{N_CLASSES - 1}|TEMPLATE",
              help=f"Class columns in class order instead of prob_0..prob_{N_CLASSES - 1}: {N_CLASSES} names, or one "
                   f"with {{}} for the class number (logit_{{}}; {{}} for 0..{N_CLASSES - 1}).")
@click.option("--who", default=None, help="Free text recorded in run.json: who made the predictions.")
@click.option("--where", default=None, help="Free text recorded in run.json: where (notebook, framework, commit).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier import of the same NAME (a trained run never is).")
@data_option
@oof_option
def import_cmd(name, oof_csv, test_csvs, logits, columns, who, where, overwrite, data, oof):
    """Import predictions made elsewhere (a teammate's notebook) as run NAME under --oof.

    The OOF file must use the folds of <oof>/folds.csv (kf export gives them
    to the teammate); test rows are matched to <data>/eval/info.csv by
    ImageID. Everything is checked before anything is written; the run then
    blends, submits and reports like a trained one (kind: external in
    run.json; kf predict cannot re-run it). docs/formats.md, "Bring your own model".

    \b
    Examples:
      kf import effb3_keras --oof-csv effb3_oof.csv --test-csv effb3_test.csv --who ana --where "kaggle kernel v7"
      kf import lgt --oof-csv oof.csv --test-csv t0.csv --test-csv t1.csv --test-csv t2.csv --test-csv t3.csv \\
          --test-csv t4.csv --logits --columns "logit_{}"
      kf ensemble --runs lite0,effb3_keras --method soft
    """
    from .external import import_run

    rj = import_run(oof, name, oof_csv, test_csvs, data=data, logits=logits, columns=columns, who=who, where=where,
                    overwrite=overwrite)
    if Path(rj["test_ids_from"]).name != "info.csv":
        click.echo(f"note: {Path(data) / 'eval' / 'info.csv'} not found; test ImageIDs checked against {rj['test_ids_from']}")
    click.echo(f"wrote {Path(oof) / name}/{{oof.csv,test.csv,run.json}}: kind external, OOF macro F1 "
               f"{rj['oof_macro_f1']:.4f}, accuracy {rj['oof_accuracy']:.4f}"
               + ("; softmax applied to logits" if logits else "")
               + (f"; test averaged over {len(test_csvs)} files" if len(test_csvs) > 1 else ""))


@click.command("export")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--run", "run", default=None, help="Also write this run's (or ensemble's) predictions as plain CSV.")
@click.option("--overwrite", is_flag=True, help="Replace files already in OUT.")
@data_option
@oof_option
def export_cmd(out, run, overwrite, data, oof):
    """Write what a teammate needs to predict on these folds into folder OUT.

    folds.csv (image keys, person, fold, label and its mask/gender/age band),
    classes.csv (the class encoding), test_ids.csv (info.csv order) and
    SPEC.md (what to send back, with a pandas example); kf import reads
    what comes back.

    \b
    Examples:
      kf export for_ana --data data
      kf export shared/lite0 --run lite0
    """
    from .export import export_files

    with flag_errors(runs="--run"):  # export_files(run=) names runs (kfold.runset); the rest: kfold.options.command_flags
        paths = export_files(oof, out, data=data, run=run, overwrite=overwrite)
    click.echo(f"wrote {out}/: {', '.join(p.name for p in paths)}")
