"""click commands of the ``kfold`` stage: ``make-data``, ``folds``, ``train``."""
from __future__ import annotations

from pathlib import Path

import click

from .options import data_option, label_options, oof_option


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
@click.option("--noise", default=0.0, show_default=True, help="Fraction of people with a flipped gender / swapped normal-incorrect (written to noise.csv).")
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
def folds_cmd(data, oof, age_cuts, corrections, k, folds_seed, force):
    """Write OOF_DIR/folds.csv: person-grouped, stratified (gender x age band) K-fold.

    \b
    Example:
      kf folds --data ../shared/maskfaces --k 5 --folds-seed 42 --age-cuts 30,58
    """
    from .data import read_eval, read_train
    from .folds import ensure_folds, stratification_report

    images, report = read_train(data, age_cuts, corrections)
    test = read_eval(data)
    folds, meta, reused = ensure_folds(images, oof, k, folds_seed, force=force)
    click.echo(f"{data}: {images.person.nunique()} people, {len(images)} train images, {len(test)} eval images; {report.summary()}")
    click.echo(f"{'reused' if reused else 'wrote'} {Path(oof) / 'folds.csv'}: K={meta['k']} seed={meta['seed']}")
    tab = stratification_report(folds, images)
    click.echo("gender x age-band share per fold (%), people counted once:")
    click.echo(tab.to_string())
