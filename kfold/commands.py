"""click commands of the ``kfold`` stage: ``make-data``, ``folds``, ``train``, ``combine``."""
from __future__ import annotations

from pathlib import Path

import click

from .options import data_option, flag_errors, label_options, oof_option, track_option


def parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("expected WIDTHxHEIGHT, e.g. 96x128") from None
    return w, h


@click.command("make-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--people", default=60, show_default=True, help="Train people (7 images each).")
@click.option("--eval-people", default=20, show_default=True, help="Eval people (7 images each).")
@click.option("--size", default="96x128", show_default=True, callback=parse_size, help="Image WIDTHxHEIGHT (competition: 384x512).")
@click.option("--seed", default=0, show_default=True)
@click.option("--noise", default=0.0, show_default=True,
              help="Fraction of people with a flipped gender / swapped normal-incorrect (written to noise.csv).")
@click.option("--quirks/--no-quirks", default=True, show_default=True, help="Mixed formats, junk files, repeated ids, as in the real data.")
def make_data_cmd(out, people, eval_people, size, seed, noise, quirks):
    """Write a synthetic competition folder OUT (train/, eval/, gt.csv).

    \b
    Example:
      kf make-data data/tiny --people 30 --eval-people 10 --size 64x64
    """
    from .synth import make_data

    counts = make_data(out, people=people, eval_people=eval_people, size=size, seed=seed, noise=noise, quirks=quirks)
    click.echo(f"wrote {out}: {counts['people']} people, {counts['train_images']} train images, "
               f"{counts['eval_images']} eval images, {counts['noisy_people']} people with injected label noise")


@click.command("folds")
@data_option
@oof_option
@label_options
@click.option("--force", is_flag=True, help="Rewrite oof/folds.csv even if it was made with other settings.")
def folds_cmd(data, oof, age_cuts, corrections, k, folds_seed, holdout, force):
    """Write OOF_DIR/folds.csv: person-grouped, stratified (gender x age band) K-fold.

    \b
    Example:
      kf folds --data ../shared/maskfaces --k 5 --folds-seed 42 --age-cuts 30,58
      kf folds --data ../shared/maskfaces --holdout 0.2   # 20% of the people as a local holdout
    """
    from .data import read_eval, read_train
    from .folds import ensure_folds, stratification_report

    images, report = read_train(data, age_cuts, corrections)
    test = read_eval(data)
    folds, meta, reused = ensure_folds(images, oof, k, folds_seed, force=force, holdout=holdout)
    click.echo(f"{data}: {images.person.nunique()} people, {len(images)} train images, {len(test)} eval images; {report.summary()}")
    click.echo(f"{'reused' if reused else 'wrote'} {Path(oof) / 'folds.csv'}: K={meta['k']} seed={meta['seed']}")
    if meta.get("holdout"):
        click.echo(f"{'reused' if reused else 'wrote'} {Path(oof) / 'holdout.csv'}: {meta['n_holdout_people']} people "
                   f"({meta['holdout']:g} of all), {meta['n_holdout_images']} images withheld from every fold")
    if force and not reused:
        from .runrecord import read_run_json, run_dirs

        stale = [d.name for d in run_dirs(oof) if read_run_json(d).folds_fingerprint not in (None, meta["folds_fingerprint"])]
        if stale:
            click.echo(f"warning: trained on the old folds: {', '.join(stale)}; kf ensemble will not blend them with runs "
                       "on these folds (retrain them with kf train --force)", err=True)
    tab = stratification_report(folds, images)
    click.echo("gender x age-band share per fold (%), people counted once:")
    click.echo(tab.to_string())


def parse_folds(value: str, k: int) -> list[int] | None:
    """``--fold``: None for ``all``, else the sorted fold numbers, each in ``0..k-1``.

    Raises:
        click.BadParameter: not ``all`` or integers, or a fold outside ``0..k-1``.
    """
    if value == "all":
        return None
    try:
        folds = sorted({int(v) for v in value.split(",")})
    except ValueError:
        raise click.BadParameter("expected all, a fold number, or a list like 0,2", param_hint="--fold") from None
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise click.BadParameter(f"fold {bad[0]} does not exist with --k {k} (folds are 0..{k - 1})", param_hint="--fold")
    return folds


@click.command("train")
@data_option
@oof_option
@label_options
@click.option("--config", "configs", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="YAML config (repeat to train several backbones).")
@click.option("--fold", "fold", default="all", show_default=True, help="all, one fold (0) or a list (0,2).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, parsed as YAML (repeatable): --set epochs=1 --set image_size=[96,96].")
@click.option("--force", is_flag=True, help="Retrain the selected folds even if finished (same settings: only those folds are deleted; "
                   "other settings: the whole run folder, finished folds included).")
@click.option("--progress/--no-progress", default=None, help="Per-epoch progress bar (default: when on a terminal).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: folds one after another here; ray: each (run, fold) a Ray task (pip install -e '.[ray]').")
@click.option("--address", default=None, help="Ray cluster address (auto or host:port); default: start a local Ray.")
@click.option("--pseudo", default=None, metavar="RUN_OR_ENSEMBLE",
              help="Pseudo-labels: test images this finished run or ensemble (e.g. ensemble/best) predicts with "
                   "confidence >= --pseudo-threshold join every fold's training rows (= --set pseudo=...).")
@click.option("--pseudo-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Minimum top-class probability of a pseudo-label [config: 0.9] (= --set pseudo_threshold=...).")
@track_option
def train_cmd(data, oof, age_cuts, corrections, k, folds_seed, holdout, configs, fold, overrides, force, progress, executor, address,
              pseudo, pseudo_threshold, track):
    """Train each config's backbone on each fold; write OOF and test probabilities.

    Finished folds are skipped on rerun; an interrupted fold resumes from its
    last finished epoch. Outputs go to OOF_DIR/<run name>/ (docs/formats.md).
    A second kf train of the same run name on the same OOF_DIR waits until
    the first ends, then skips what it finished.

    \b
    Example:
      kf train --data ../shared/maskfaces --config configs/lite0.yaml --config configs/mnv3.yaml --fold all
      kf train --config configs/lite0.yaml --fold 0 --set epochs=1 --set image_size=[64,64]
      kf train --config configs/lite0_mix.yaml --pseudo ensemble/best --pseudo-threshold 0.9
    """
    from . import tracking
    from .config import load_config, parse_overrides
    from .data import load_data
    from .io import check_can_write
    from .locks import stage_locks
    from .preflight import check_config
    from .train import train_runs

    if address is not None and executor != "ray":
        raise click.BadParameter("needs --executor ray (the folds would train here, not on that cluster)",
                                 param_hint="--address")
    if executor == "ray":
        from .executors import check_address

        check_address(address)  # before folds.csv is written (train_runs checks again for library callers)
    sets = parse_overrides(overrides)
    sets += [(k_, v) for k_, v in (("pseudo", pseudo), ("pseudo_threshold", pseudo_threshold)) if v is not None]
    cfgs = tracking.enable([load_config(c, sets) for c in configs], track)
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise click.UsageError(f"two configs share a run name ({', '.join(names)}); give each a distinct name")
    folds = parse_folds(fold, k)  # before load_data writes folds.csv
    for c in cfgs:  # preflight (docs/reliability.md): device, weights, image size, before folds.csv is written
        check_config(c, device=executor == "local")
    check_can_write(oof, folder=True)  # before minutes of work: a read-only or full --oof is one line now
    with flag_errors(force="kf folds --force"):  # kf train --force retrains runs; rewriting folds.csv is kf folds'
        bundle = load_data(data, oof, age_cuts, corrections, k, folds_seed, holdout=holdout)
    if bundle.has_holdout:
        meta = bundle.folds_meta
        click.echo(f"holdout: {meta['n_holdout_people']} people ({meta['n_holdout_images']} images) withheld from every "
                   f"fold ({Path(oof) / 'holdout.csv'})")
    with stage_locks([Path(oof) / n for n in names], click.echo):  # one kf train per run folder at a time
        metas = train_runs(cfgs, bundle, oof, folds, force=force, echo=click.echo, progress=progress,
                           executor=executor, address=address)
    done = [m for m in metas if m["finished"]]
    if done:
        click.echo("run                  OOF macro F1  accuracy  minutes")
        for m in done:
            click.echo(f"{m['name']:<20} {m['oof_macro_f1']:>12.4f}  {m['oof_accuracy']:>8.4f}  {m['seconds'] / 60:>7.1f}")


@click.command("combine")
@oof_option
@click.option("--mask", "mask_run", required=True, help="Run whose mask marginal is used (e.g. a task: mask run).")
@click.option("--gender", "gender_run", required=True, help="Run whose gender marginal is used.")
@click.option("--age", "age_run", required=True, help="Run whose age-band marginal is used.")
@click.option("--name", required=True, help="Name of the combined run folder under OOF_DIR.")
@click.option("--overwrite", is_flag=True, help="Replace an existing combined run of that name.")
def combine_cmd(oof, mask_run, gender_run, age_run, name, overwrite):
    """Join three single-task runs into one 18-class run (product of their task marginals).

    The new OOF_DIR/NAME/ holds oof.csv, test.csv and run.json like a trained
    run, so kf ensemble, kf report and kf submit read it like any other.

    \b
    Example:
      kf combine --mask mask_lite0 --gender gender_lite0 --age age_lite0 --name tasks_lite0
    """
    from .heads import combine_task_runs
    from .io import KfError
    from .runrecord import is_run_dir, read_run_json

    out = Path(oof) / name
    if is_run_dir(out):
        old = read_run_json(out)
        if not old.get("combined_from") or not overwrite:
            what = "a combined run" if old.get("combined_from") else "a run that kf combine did not write"
            raise KfError(f"{out}: already holds {what}; choose another --name"
                          + (" or pass --overwrite" if old.get("combined_from") else ""))
    runs = {"mask": Path(oof) / mask_run, "gender": Path(oof) / gender_run, "age": Path(oof) / age_run}
    with flag_errors(out_dir="--name"):  # the new run folder is <oof>/<name>
        meta = combine_task_runs(runs, out)
    acc = meta["oof_task_accuracy"]
    click.echo(f"wrote {out}/{{oof.csv,test.csv,run.json}}: OOF macro F1 {meta['oof_macro_f1']:.4f}, task accuracy "
               f"mask {acc['mask']:.4f} gender {acc['gender']:.4f} age {acc['age']:.4f}")
