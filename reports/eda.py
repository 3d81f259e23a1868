"""Exploratory tables and plots of a competition folder (``kf eda``).

Everything is computed from what :func:`kfold.data.read_train` and
:func:`kfold.data.read_eval` return (so labels are the ones training sees,
after ``--age-cuts`` and ``--corrections``) plus one walk of the image
folders for what the reader skips (junk) and one header read per image
(:func:`kfold.images.image_info`: upright size, mode; pixels are not decoded).

Written to ``--out`` (see ``docs/reports.md``): one CSV per table, two PNGs
(``class_distribution.png``, ``age_histogram.png``) and ``index.html``, a
self-contained page with the plots embedded.

The plots are drawn by :mod:`reports.plots`, the page by :mod:`reports.page`
(both shared with :mod:`reports.report`).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from kfold import labels as L
from kfold.io import ParamError, atomic_write, write_csv
from kfold.labels import band_names, class_labels

from .page import html_page, png_tag, save_png, table_html
from .plots import plot_age_histogram, plot_class_distribution

#: kind of each junk entry, by name
JUNK_KINDS = (("._", "macOS resource fork (._*)"), (".ipynb_checkpoints", "Jupyter checkpoint folder"),
              (".DS_Store", "macOS .DS_Store"))
#: table name -> CSV file, in the order they are printed and shown
TABLE_FILES = {
    "overview": "overview.csv", "classes": "classes.csv", "gender": "gender.csv", "age_bands": "age_bands.csv",
    "mask": "mask.csv", "race": "race.csv", "gender_age": "gender_age.csv", "age_histogram": "age_histogram.csv",
    "extensions": "extensions.csv", "image_sizes": "image_sizes.csv", "junk": "junk.csv",
    "corrections": "corrections.csv",
}


# --------------------------------------------------------------------------- tables

@dataclass
class EdaResult:
    """The tables of :func:`eda_tables`.

    Attributes:
        tables: table name (keys of :data:`TABLE_FILES`) -> DataFrame.
        people: one row per person: ``person, id, gender (0/1), age, age_band, race``.
        images: :func:`kfold.data.read_train`'s table (one row per train image).
        age_cuts: the ``(a, b)`` cuts used.
        notes: one-line remarks for the summary (reader warnings, skipped eval).
    """

    tables: dict[str, pd.DataFrame]
    people: pd.DataFrame
    images: pd.DataFrame
    age_cuts: tuple[float, float]
    notes: list[str] = field(default_factory=list)


def _counts(images: pd.DataFrame, people: pd.DataFrame, col: str, values: Iterable, names: Sequence[str],
            header: str) -> pd.DataFrame:
    """People and images per value of ``col`` (every value listed, zeros included)."""
    rows = []
    n_people, n_images = len(people), len(images)
    for v, name in zip(values, names):
        p = int((people[col] == v).sum()) if col in people else int(images.loc[images[col] == v, "person"].nunique())
        i = int((images[col] == v).sum())
        rows.append({header: name, "people": p, "people_pct": round(100 * p / n_people, 2),
                     "images": i, "images_pct": round(100 * i / n_images, 2)})
    return pd.DataFrame(rows)


def find_junk(root: str | Path) -> pd.DataFrame:
    """Hidden entries (names starting with ``.``) under ``train/images`` and ``eval/images``.

    Looks one level into ``train/images`` (person folders) and at the top of
    both image folders; a hidden folder counts once (its content is not listed).

    Returns:
        DataFrame ``path`` (relative to ``root``), ``kind``, ``is_dir``, sorted by path.
    """
    root = Path(root)
    rows = []

    def visit(folder: Path, depth: int) -> None:
        if not folder.is_dir():
            return
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                kind = next((k for prefix, k in JUNK_KINDS if entry.name.startswith(prefix)), "other hidden entry")
                rows.append({"path": entry.relative_to(root).as_posix(), "kind": kind, "is_dir": entry.is_dir()})
            elif depth > 0 and entry.is_dir():
                visit(entry, depth - 1)

    visit(root / "train" / "images", 1)
    visit(root / "eval" / "images", 0)
    return pd.DataFrame(rows, columns=["path", "kind", "is_dir"])


def image_files(root: str | Path, images: pd.DataFrame, eval_images: pd.DataFrame | None) -> pd.DataFrame:
    """Extension, size and mode of every train and eval image, read from the file header.

    Read by :func:`kfold.images.image_info`, as training and prediction will
    decode the file: sizes are the upright ones (EXIF orientation applied).

    Args:
        root: the competition folder.
        images: ``read_train`` table (column ``image``, relative to ``root``).
        eval_images: ``read_eval`` table, or None to skip eval.

    Returns:
        DataFrame ``split`` (train/eval), ``image``, ``extension`` (as on disk,
        e.g. ``.JPG``), ``width``, ``height`` (upright pixels, -1 when unreadable),
        ``mode`` (PIL mode, e.g. RGB, RGBA, L, I;16; ``unreadable`` when PIL
        cannot read the header), ``problem`` (None, or why kf will refuse the
        file: unreadable header, or a mode without an agreed range such as ``F``).
    """
    from kfold.images import image_info

    root = Path(root)
    rows = []
    parts = [("train", images["image"])] + ([("eval", eval_images["image"])] if eval_images is not None else [])
    for split, paths in parts:
        for rel in paths:
            w, h, mode, problem = image_info(root / rel)
            rows.append((split, rel, Path(rel).suffix, w, h, mode, problem))
    return pd.DataFrame(rows, columns=["split", "image", "extension", "width", "height", "mode", "problem"])


def correction_rows(root: str | Path, corrections: str | Path | None, age_cuts: Sequence[float]) -> pd.DataFrame:
    """What each row of the corrections file changes: ``path, field, old, new, changed``.

    ``old`` is train.csv's value (for ``mask-swap``: the two stems' mask
    states), ``new`` the corrected one; for ``age`` the band is shown too,
    e.g. ``59 (30-59)`` -> ``61 (>=60)``.

    Raises:
        KfError: see :func:`kfold.data.read_corrections`.
    """
    from kfold.data import read_corrections, read_people

    cols = ["path", "field", "old", "new", "changed"]
    if corrections is None:
        return pd.DataFrame(columns=cols)
    people = read_people(root).set_index("path")
    corr = read_corrections(corrections, people.reset_index())
    names = band_names(age_cuts)
    rows = []
    for r in corr.itertuples():
        if r.field == "gender":
            old, new = people.at[r.path, "gender"], r.value.lower()
        elif r.field == "age":
            a, b = people.at[r.path, "age"], float(r.value)
            old = f"{a:g} ({names[int(L.age_band(a, age_cuts))]})"
            new = f"{b:g} ({names[int(L.age_band(b, age_cuts))]})"
        else:
            s1, s2 = (r.value or "incorrect_mask:normal").split(":")
            m1, m2 = L.MASK_NAMES[L.MASK_OF_STEM[s1]], L.MASK_NAMES[L.MASK_OF_STEM[s2]]
            old, new = f"{s1}={m1}, {s2}={m2}", f"{s1}={m2}, {s2}={m1}"
        rows.append((r.path, r.field, str(old), str(new), old != new))
    return pd.DataFrame(rows, columns=cols)


def eda_tables(root: str | Path, age_cuts: Sequence[float] = L.DEFAULT_AGE_CUTS,
               corrections: str | Path | None = None) -> EdaResult:
    """Count people and images by class, task, race, age, file type and size; list junk and corrections.

    Args:
        root: competition folder holding ``train/`` (and usually ``eval/``; it is skipped when
            ``eval/info.csv`` is absent).
        age_cuts: ``(a, b)`` age band cut-offs in years.
        corrections: optional label-corrections CSV, applied as in training.

    Returns:
        An :class:`EdaResult`. Tables (people are counted once, images 7 per person):

        * ``overview``: ``item, value`` (people, images, eval images, junk, corrections, warnings);
        * ``classes``: ``class, name, mask, gender, age_band, people, images, images_pct`` (18 rows);
        * ``gender`` / ``age_bands`` / ``mask`` / ``race``: ``<value>, people, people_pct, images, images_pct``;
        * ``gender_age``: people per gender (rows) x age band (columns) with totals;
        * ``age_histogram``: ``age, age_band, people`` per whole year from the youngest to the oldest;
        * ``extensions``: ``split, extension, files`` (extension as on disk);
        * ``image_sizes``: ``split, width, height, mode, files``;
        * ``junk``: ``path, kind, is_dir`` (see :func:`find_junk`);
        * ``corrections``: ``path, field, old, new, changed`` (see :func:`correction_rows`).

    Raises:
        KfError: the folder is missing or unreadable (see :func:`kfold.data.read_train`,
            :func:`kfold.data.read_eval`, :func:`kfold.data.read_corrections`).
    """
    from kfold.data import read_eval, read_people, read_train

    root = Path(root)
    age_cuts = (float(age_cuts[0]), float(age_cuts[1]))
    images, report = read_train(root, age_cuts, corrections)
    race = read_people(root).set_index("path")["race"]
    people = images.groupby("person", sort=False).first().reset_index()[["person", "id", "gender", "age", "age_band"]]
    people["race"] = people["person"].map(race)
    images = images.assign(race=images["person"].map(race))
    notes = list(report.warnings)
    eval_images = None
    if (root / "eval" / "info.csv").is_file():
        eval_images = read_eval(root)
    else:
        notes.append(f"{root / 'eval' / 'info.csv'} not found: eval images not counted")

    ages = band_names(age_cuts)
    names = class_labels(age_cuts)
    t: dict[str, pd.DataFrame] = {}
    junk = find_junk(root)
    corr = correction_rows(root, corrections, age_cuts)
    t["overview"] = pd.DataFrame({"item": [
        "people", "train images", "eval images", "junk entries", "junk skipped by the reader",
        "label corrections applied", "reader warnings", "age cuts"], "value": [
        len(people), len(images), -1 if eval_images is None else len(eval_images), len(junk), report.junk_skipped,
        report.corrections_applied, len(report.warnings), f"{age_cuts[0]:g},{age_cuts[1]:g}"]})
    lab = images["label"].to_numpy()
    cls = pd.DataFrame({"class": np.arange(L.N_CLASSES), "name": names})
    m, g, a = L.decode(cls["class"].to_numpy())
    cls["mask"], cls["gender"], cls["age_band"] = [L.MASK_NAMES[i] for i in m], [L.GENDER_NAMES[i] for i in g], [ages[i] for i in a]
    cls["people"] = [images.loc[lab == c, "person"].nunique() for c in range(L.N_CLASSES)]
    cls["images"] = np.bincount(lab, minlength=L.N_CLASSES)
    cls["images_pct"] = (100 * cls["images"] / len(images)).round(2)
    t["classes"] = cls
    t["gender"] = _counts(images, people, "gender", range(2), L.GENDER_NAMES, "gender")
    t["age_bands"] = _counts(images, people, "age_band", range(3), ages, "age_band")
    # mask is per image: "people" counts the people with at least one image in that state
    t["mask"] = _counts(images, people, "mask", range(3), L.MASK_NAMES, "mask")
    races = sorted(people["race"].unique())
    t["race"] = _counts(images, people, "race", races, races, "race")
    ga = pd.crosstab(people["gender"].map(dict(enumerate(L.GENDER_NAMES))),
                     people["age_band"].map(dict(enumerate(ages)))).reindex(index=list(L.GENDER_NAMES), columns=list(ages), fill_value=0)
    ga["all"] = ga.sum(axis=1)
    ga.loc["all"] = ga.sum(axis=0)
    t["gender_age"] = ga.rename_axis(index="gender", columns=None).reset_index()
    years = np.floor(people["age"].to_numpy()).astype(int)
    span = np.arange(years.min(), years.max() + 1)
    hist = pd.DataFrame({"age": span, "age_band": [ages[int(b)] for b in L.age_band(span, age_cuts)],
                         "people": np.bincount(years - years.min(), minlength=len(span))})
    t["age_histogram"] = hist
    files = image_files(root, images, eval_images)
    t["extensions"] = (files.groupby(["split", "extension"], sort=True).size().rename("files").reset_index()
                       .sort_values(["split", "files"], ascending=[False, False], kind="stable").reset_index(drop=True))
    t["image_sizes"] = (files.groupby(["split", "width", "height", "mode"], sort=True).size().rename("files").reset_index()
                        .sort_values(["split", "files"], ascending=[False, False], kind="stable").reset_index(drop=True))
    t["junk"] = junk
    t["corrections"] = corr
    bad = files.loc[files["mode"] == "unreadable", "image"].tolist()
    if bad:
        shown = ", ".join(str(root / b) for b in bad[:3]) + (f", ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
        notes.append(f"{len(bad)} image(s) PIL cannot read (kf train will stop on them; fix or remove them): {shown}")
    refused = files[files["problem"].notna() & (files["mode"] != "unreadable")]
    if len(refused):
        r0 = refused.iloc[0]
        notes.append(f"{len(refused)} image(s) kf refuses (kf train will stop on them; convert them): "
                     f"{root / r0['image']}: {r0['problem']}" + (f", ... ({len(refused) - 1} more)" if len(refused) > 1 else ""))
    wide = files[files["mode"].str.startswith("I") & files["problem"].isna()]
    if len(wide):
        notes.append(f"{len(wide)} 16-bit grey image(s) (mode {', '.join(sorted(wide['mode'].unique()))}): "
                     f"kf scales them to 8 bits (value / 257), e.g. {root / wide.iloc[0]['image']}")
    return EdaResult(tables=t, people=people, images=images, age_cuts=age_cuts, notes=notes)


# --------------------------------------------------------------------------- write

def format_summary(result: EdaResult) -> str:
    """The short terminal summary: counts per class, task and race, files, junk and corrections."""
    t = result.tables
    ov = dict(zip(t["overview"]["item"], t["overview"]["value"]))
    lines = [f"{ov['people']} people, {ov['train images']} train images, "
             + (f"{ov['eval images']} eval images" if ov["eval images"] >= 0 else "no eval/")
             + f"; age cuts {ov['age cuts']}"]

    def line(name: str, key: str) -> str:
        df = t[name]
        return f"{name + ':':<10} " + ", ".join(f"{getattr(r, key)} {r.people} people / {r.images} images" for r in df.itertuples())

    lines += [line("gender", "gender"), line("age_bands", "age_band"),
              "mask:      " + ", ".join(f"{r.mask} {r.images} images" for r in t["mask"].itertuples()),
              "race:      " + ", ".join(f"{r.race} {r.people}" for r in t["race"].itertuples()) + " people"]
    cls = t["classes"]
    lines.append("images per class: " + " ".join(f"{c}:{n}" for c, n in zip(cls["class"], cls["images"]))
                 + f" (smallest: {cls.loc[cls.images.idxmin(), 'name']} {cls.images.min()})")
    ext = t["extensions"]
    lines.append("extensions: " + ", ".join(f"{r.split} {r.extension} {r.files}" for r in ext.itertuples()))
    sz = t["image_sizes"]
    lines.append("image sizes: " + ", ".join(f"{r.split} {r.width}x{r.height} {r.mode} {r.files}" for r in sz.head(6).itertuples())
                 + (f", ... ({len(sz)} kinds)" if len(sz) > 6 else ""))
    junk = t["junk"]
    kinds = ", ".join(f"{k} {n}" for k, n in junk["kind"].value_counts().items())
    lines.append(f"junk: {len(junk)} entries" + (f" ({kinds})" if len(junk) else ""))
    corr = t["corrections"]
    lines.append(f"label corrections: {ov['label corrections applied']} applied"
                 + (f" ({int(corr['changed'].sum())} of {len(corr)} rows change a value)" if len(corr) else ""))
    lines += [f"note: {n}" for n in result.notes[:5]] + ([f"note: ... {len(result.notes) - 5} more"] if len(result.notes) > 5 else [])
    return "\n".join(lines)


def write_eda(result: EdaResult, out: str | Path) -> list[Path]:
    """Write the tables (CSV), the two plots (PNG) and ``index.html`` into ``out`` (created if needed).

    Returns:
        The paths written.

    Raises:
        ParamError: ``out`` exists and is not a folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParamError(f"{out}: exists and is not a folder ({{out}})", "out")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, file in TABLE_FILES.items():
        write_csv(result.tables[name], out / file)
        written.append(out / file)
    pngs = {"class_distribution.png": plot_class_distribution(result.tables["classes"]),
            "age_histogram.png": plot_age_histogram(result.people, result.age_cuts)}
    data = {}
    for file, fig in pngs.items():
        data[file] = save_png(fig, out / file)
        written.append(out / file)
    body = [f"<pre>{html.escape(format_summary(result))}</pre>", png_tag(data["class_distribution.png"], "images per class"),
            png_tag(data["age_histogram.png"], "age histogram")]
    for name, file in TABLE_FILES.items():
        df = result.tables[name]
        body.append(f"<h2>{html.escape(name)} <small>({file})</small></h2>")
        body.append(table_html(df.head(200)) + (f"<p>... {len(df) - 200} more rows in {file}</p>" if len(df) > 200 else ""))
    with atomic_write(out / "index.html") as fh:
        fh.write(html_page("kf eda", body))
    written.append(out / "index.html")
    return written
