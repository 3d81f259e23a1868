"""The ``kf`` command line: thin click commands over the library functions.

Commands are imported lazily (click's documented LazyGroup pattern) so that
``kf --help`` does not import torch. A :class:`kfold.io.KfError` anywhere is
printed as one ``error: ...`` line with exit status 2, without a traceback (a
:class:`kfold.io.ParamError` worded with the command's flags:
:func:`kfold.options.command_flags`), and
so is an ``OSError`` (``error: <path>: <cause>``: read-only folder, full disk);
so is a usage error (unknown option, bad ``--fold``), in place of click's
four-line usage block. Ctrl-C exits with status 130 and says how to resume.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys

import click

from kfold.io import KfError, ParamError

COMMANDS = {
    "make-data": ("kfold.commands", "make_data_cmd"),
    "folds": ("kfold.commands", "folds_cmd"),
    "train": ("kfold.commands", "train_cmd"),
    "combine": ("kfold.commands", "combine_cmd"),
    "ensemble": ("ensemble.cli", "ensemble_cmd"),
    "predict": ("ensemble.cli", "predict_cmd"),
    "import": ("ensemble.cli", "import_cmd"),
    "export": ("ensemble.cli", "export_cmd"),
    "submit": ("submit.cli", "submit_cmd"),
    "eda": ("reports.cli", "eda_cmd"),
    "report": ("reports.cli", "report_cmd"),
}
HELP = {
    "make-data": "Write a synthetic data set in the competition layout.",
    "folds": "Write oof/folds.csv: person-grouped stratified K-fold.",
    "train": "Train backbones per fold; save OOF and test probabilities.",
    "combine": "Join mask, gender and age runs into one 18-class run.",
    "ensemble": "Blend runs on OOF; report single vs ensemble macro F1.",
    "predict": "Apply a run or ensemble (with TTA) to a folder of images.",
    "import": "Import a teammate's OOF and test predictions as a run.",
    "export": "Write folds, class encoding and spec for a teammate.",
    "submit": "Write the competition CSV (ImageID,ans) from a test.csv.",
    "eda": "Tables and plots of the competition data.",
    "report": "Per-class F1, confusion matrices, curves for runs/ensembles.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        mod, attr = COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name in COMMANDS or name.startswith("-"):
            return super().resolve_command(ctx, args)
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        ctx.fail(f"No such command {name!r}." + (f" Did you mean {close[0]!r}?" if close else ""))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, HELP[n]) for n in COMMANDS])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ParamError as e:  # a library parameter's name -> this command's flag (``k`` -> ``--k``)
            from kfold.options import command_flags

            cmd = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {e.render(command_flags(cmd) if cmd is not None else {})}", err=True)
            ctx.exit(2)
        except KfError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except OSError as e:  # read-only folder, full disk, no permission outside kfold.io's writers
            where = e.filename2 if e.filename2 is not None else e.filename
            cause = e.strerror or str(e) or type(e).__name__
            click.echo(f"error: {where}: {cause}" if where is not None else f"error: {cause}", err=True)
            ctx.exit(2)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's ``main`` with one-line errors: ``error: <message> (see kf <command> --help)``."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else (prog_name or "kf")
            click.echo(f"error: {e.format_message()} (see {where} --help)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(INTERRUPTED, err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


INTERRUPTED = ("interrupted: files are written atomically, so none is left half-written; rerun the same command "
               "(kf train skips finished folds and resumes an interrupted one from its last finished epoch)")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kf")
def main() -> None:
    """kf: K-fold, out-of-fold, ensemble and submission toolkit for the face-mask competition.

    \b
    Main job:
      kf make-data data --people 200          # or use the real competition folder
      kf train --data data --config configs/lite0.yaml --config configs/mnv3.yaml --fold all
      kf ensemble --data data --method caruana --bias
      kf submit --data data --from ensemble/caruana --out submission.csv
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)


if __name__ == "__main__":
    main()
