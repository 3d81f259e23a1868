"""The report folder of ``kf report``: tables, plots and ``index.html`` for runs and ensembles side by side.

:func:`run_report` evaluates each run or ensemble (:func:`reports.evaluate.evaluate`) and
:func:`write_report` writes the folder; files written are listed in ``docs/reports.md``.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from kfold.io import KfError, ParamError, atomic_write, write_csv
from kfold.runrecord import is_run_dir, read_run_json

from .evaluate import RunReport, evaluate, find_reports
from .page import html_page, png_tag, save_png, table_html
from .plots import contact_sheet, plot_confusion, plot_curves, plot_per_class_f1, plot_task_confusions


def comparison_table(reports: list[RunReport]) -> pd.DataFrame:
    """One row per report: ``name, kind, images, macro_f1, nested_macro_f1, accuracy, <task>_accuracy,
    <task>_macro_f1, fold_f1_mean, fold_f1_std, worst_class`` (see :class:`RunReport` for ``nested_macro_f1``)."""
    return pd.DataFrame([r.row() for r in reports])


def default_data_root(oof_dir: str | Path, reports: list[RunReport]) -> Path | None:
    """The data folder recorded in a ``run.json`` (``data.root``) of the reports or of any run under ``oof_dir``, if it exists."""
    dirs = [r.dir for r in reports if r.kind == "run"]
    oof_dir = Path(oof_dir)
    if oof_dir.is_dir():
        dirs += [d for d in sorted(oof_dir.iterdir()) if is_run_dir(d)]
    for d in dirs:
        root = (read_run_json(d).get("data") or {}).get("root")
        if root and Path(root).is_dir():
            return Path(root)
    return None


def _safe(name: str) -> str:
    return name.replace("/", "__")


def write_report(reports: list[RunReport], out: str | Path, data_root: str | Path | None, top: int = 24) -> list[Path]:
    """Write every report's tables and plots, ``comparison.csv``, ``per_class_f1.png`` and ``index.html``.

    Layout: ``<out>/<name>/...`` per report (``ensemble/caruana`` -> ``<out>/ensemble/caruana/``),
    see ``docs/reports.md``.

    Args:
        data_root: the train images' folder for the contact sheets; None when ``top`` is 0.
        top: images on each contact sheet (0: no contact sheet).

    Raises:
        ParamError: ``out`` is a file; ``data_root`` is missing (the messages name ``out``, ``data_root``
            and ``top``). KfError: ``data_root`` lacks an image.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParamError(f"{out}: exists and is not a folder ({{out}})", "out")
    if top > 0 and data_root is None:
        raise ParamError("no data folder for the contact sheet of confident errors (no run.json records one that exists); "
                         "pass {data_root}, or {top} 0 for no contact sheet", "data_root", "top")
    if top > 0 and not Path(data_root).is_dir():
        raise ParamError(f"{data_root}: data folder not found; the contact sheet reads the train images "
                         "(pass {data_root}, or {top} 0 for no contact sheet)", "data_root", "top")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def csv(df: pd.DataFrame, path: Path) -> None:
        write_csv(df, path, float_format="%.6f")
        written.append(path)

    def png(fig, path: Path) -> bytes:
        data = save_png(fig, path)
        written.append(path)
        return data

    table = comparison_table(reports)
    csv(table, out / "comparison.csv")
    f1_png = png(plot_per_class_f1(reports), out / "per_class_f1.png")
    body = ["<h2>Runs and ensembles (out-of-fold)</h2>", table_html(table),
            "<p>Task columns use task probabilities marginalised over the other tasks. "
            "Confusion matrices are normalised per true class (rows sum to 1; each cell is a share of that class's images).</p>",
            png_tag(f1_png, "per-class F1")]
    for r in reports:
        d = out / r.name
        d.mkdir(parents=True, exist_ok=True)
        names = r.per_class["name"].tolist()
        csv(r.per_class, d / "per_class.csv")
        csv(r.per_fold, d / "per_fold.csv")
        csv(r.tasks, d / "tasks.csv")
        cm = pd.DataFrame(r.confusion, columns=names)
        cm.insert(0, "true", names)
        csv(cm, d / "confusion.csv")
        csv(r.misclassified, d / "misclassified.csv")
        csv(r.suspects, d / "suspects.csv")
        figs = [("confusion.png", png(plot_confusion(r.confusion, names, f"{r.name}: confusion matrix, OOF, rows normalised"),
                                      d / "confusion.png"))]
        figs.append(("confusion_tasks.png", png(plot_task_confusions(r.task_confusion, r.age_cuts, r.name), d / "confusion_tasks.png")))
        if r.curves is not None:
            csv(r.curves, d / "curves.csv")
            figs.append(("curves.png", png(plot_curves(r.curves, f"{r.name}: training curves"), d / "curves.png")))
        if top > 0:
            sheet = contact_sheet(r.misclassified, data_root, r.name, top=top)
            if sheet is not None:
                figs.append(("misclassified.png", png(sheet, d / "misclassified.png")))
        body += [f"<h2 id='{html.escape(_safe(r.name))}'>{html.escape(r.name)} ({r.kind})</h2>",
                 f"<p>macro F1 <b>{r.macro_f1:.4f}</b>, accuracy {r.accuracy:.4f}, {len(r.keys)} images, "
                 f"age cuts {r.age_cuts[0]:g},{r.age_cuts[1]:g}. Files: {html.escape(r.name)}/</p>",
                 "<h3>per task</h3>", table_html(r.tasks), "<h3>per fold</h3>", table_html(r.per_fold),
                 "<h3>per class</h3>", table_html(r.per_class)]
        body += [png_tag(data, f"{r.name} {file}") for file, data in figs]
        body += ["<h3>people whose labels the models doubt most (suspects.csv, top 15)</h3>", table_html(r.suspects.head(15), 3)]
        body += [f"<p>note: {html.escape(n)}</p>" for n in r.notes]
    with atomic_write(out / "index.html") as fh:
        fh.write(html_page("kf report", body))
    written.append(out / "index.html")
    return written


def format_summary(reports: list[RunReport]) -> str:
    """Terminal summary: the comparison table, then per report its three worst classes and most suspect people."""
    table = comparison_table(reports)
    cols = ["name", "kind", "macro_f1", "nested_macro_f1", "accuracy", "mask_accuracy", "gender_accuracy", "age_accuracy",
            "fold_f1_std"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        lines = [table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    if (table["kind"] == "ensemble").any():
        lines.append("macro_f1: on all OOF rows (in-sample for an ensemble: its weights saw them); nested_macro_f1: "
                     "per-fold mean for a run, kf ensemble's nested estimate for an ensemble: compare on this one")
    for r in reports:
        worst = r.per_class.sort_values(["f1", "class"], kind="stable").head(3)
        lines.append(f"{r.name}: worst classes " + ", ".join(f"{w.name} F1 {w.f1:.2f} (n={w.support})" for w in worst.itertuples())
                     + f"; {len(r.misclassified)} OOF errors")
        s = r.suspects.head(3)
        lines.append(f"{r.name}: most suspect labels " + ", ".join(
            f"{p.person} (p other gender {p.p_other_gender:.2f}, p mask swap {p.p_mask_swap:.2f})" for p in s.itertuples()))
        lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def run_report(names: Sequence[str] | None, oof_dir: str | Path, out: str | Path | None = None,
               data_root: str | Path | None = None, top: int = 24) -> tuple[list[RunReport], list[Path]]:
    """Everything ``kf report`` does: evaluate each run/ensemble and write the report folder.

    Args:
        names: runs/ensembles; None or empty for every finished one under ``oof_dir`` (:func:`find_reports`).
        oof_dir: the ``--oof`` folder.
        out: output folder (default ``<oof>/report``).
        data_root: train images for the contact sheet; None: the ``data.root`` a run recorded.
        top: images per contact sheet (0: none, and no data folder is needed).

    Returns:
        ``(reports, written paths)``.

    Raises:
        KfError: no finished run, unknown name, bad ``oof.csv``, missing data folder or image.
    """
    oof_dir = Path(oof_dir)
    if not names:
        names = find_reports(oof_dir)
        if not names:
            raise KfError(f"{oof_dir}: no finished runs or ensembles (train with kf train, or name a run folder)")
    if len(set(names)) != len(names):
        raise KfError(f"a run is named twice: {', '.join(names)}")
    reports = [evaluate(n, oof_dir) for n in names]
    if top > 0 and data_root is None:
        data_root = default_data_root(oof_dir, reports)
    written = write_report(reports, out if out is not None else oof_dir / "report", data_root, top=top)
    return reports, written
