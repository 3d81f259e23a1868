"""PNG and self-contained HTML helpers shared by ``kf eda`` and ``kf report`` (plots embedded as data URIs)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable

import pandas as pd

from kfold.io import atomic_write


def save_png(fig, path: str | Path | None = None, dpi: int = 110) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes and, when ``path`` is given, write them atomically.

    Uses ``Figure.savefig`` (Agg), never pyplot, so no display or global state is involved.

    Returns:
        The PNG bytes.

    Raises:
        KfError: ``path``'s folder is missing (see :func:`kfold.io.atomic_write`).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    data = buf.getvalue()
    if path is not None:
        with atomic_write(path, "wb") as fh:
            fh.write(data)
    return data



def png_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as base64."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table_html(df: pd.DataFrame, float_digits: int = 4) -> str:
    """A DataFrame as an HTML table (no index, floats rounded)."""
    return df.to_html(index=False, border=0, classes="t", float_format=lambda v: f"{v:.{float_digits}f}", na_rep="")


CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}"
       "table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}table.t th,table.t td{padding:2px 8px;border-bottom:1px solid #eee;"
       "text-align:right}table.t th{background:#f4f4f4}img{max-width:100%;margin:.5em 0;display:block}pre{background:#f8f8f8;padding:.5em}")


def html_page(title: str, body: Iterable[str]) -> str:
    """A self-contained HTML page (inline CSS, images as data URIs) from HTML fragments."""
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")
