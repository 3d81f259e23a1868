"""``kf submit``: a thin click command over :mod:`submit.submission` and :mod:`submit.summary`."""
from __future__ import annotations

from pathlib import Path

import click

from kfold.io import KfError, check_writable
from kfold.options import data_option, oof_option, track_option


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


@click.command("submit")
@click.option("--from", "source", required=True, metavar="RUN_OR_ENSEMBLE",
              help="A run (lite0), an ensemble (ensemble/caruana) under --oof, or a path to a test.csv.")
@click.option("--out", required=True, type=click.Path(), help="Submission CSV to write (ImageID,ans).")
@data_option
@oof_option
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never done otherwise).")
@click.option("--compare", type=click.Path(), default=None, metavar="OLD.csv",
              help="An earlier submission: count changed answers and list the commonest changes.")
@click.option("--ground-truth", "ground_truth", type=click.Path(), default=None, metavar="GT.csv",
              help="ImageID,ans with the true answers (a local holdout): print macro F1 and accuracy.")
@track_option
def submit_cmd(source, out, data, oof, overwrite, compare, ground_truth, track):
    """Write the competition CSV (ImageID,ans in eval/info.csv order, ans = argmax) from a test.csv.

    Every input is validated before anything is written; the file is written
    atomically and never replaces an existing one without --overwrite.

    \b
    Example:
      kf submit --data data --from ensemble/caruana --out submissions/caruana.csv
      kf submit --data data --from lite0 --out sub.csv --compare submissions/caruana.csv --ground-truth data/gt.csv
    """
    from kfold import tracking

    from .submission import make_submission, read_answers, read_info_ids, read_test_probs, resolve_source, write_submission
    from .summary import class_distribution, compare_answers, format_changes, format_distribution, format_score, score, train_labels

    track = tracking.wanted(track)
    out = Path(out)
    check_writable(out, overwrite=overwrite)
    src = resolve_source(source, oof)
    info_ids = read_info_ids(data)
    for inp in (src, Path(data) / "eval" / "info.csv", *(Path(p) for p in (ground_truth,) if p)):
        if _same_file(out, inp):
            raise KfError(f"{out}: is the input {inp}; choose another --out")
    probs = read_test_probs(src)
    sub = make_submission(probs, info_ids, source=src)
    old = read_answers(compare, info_ids) if compare else None
    truth = read_answers(ground_truth, info_ids) if ground_truth else None
    train, note = train_labels(data)

    write_submission(sub, out, info_ids, overwrite=overwrite)
    if track:
        tracking.log_submission(out, src, sub["ans"].to_numpy(), source)

    reordered = list(probs["ImageID"].astype(str).str.strip()) != list(sub["ImageID"])
    click.echo(f"wrote {out}: {len(sub):,} rows from {src}" + (" (rows reordered to info.csv order)" if reordered else ""))
    click.echo(format_distribution(class_distribution(sub["ans"].to_numpy(), train)))
    if note:
        click.echo(note)
    if old is not None:
        n_changed, table = compare_answers(old["ans"].to_numpy(), sub["ans"].to_numpy())
        click.echo(format_changes(n_changed, len(sub), table, str(compare)))
    if truth is not None:
        click.echo(format_score(score(truth["ans"].to_numpy(), sub["ans"].to_numpy()), str(ground_truth)))
