"""reports: what ``kf eda`` and ``kf report`` write; reads the competition folder and the stage files, writes only its --out folder.

Modules: :mod:`reports.eda` (data tables), :mod:`reports.evaluate` (scores of a run or ensemble from its
``oof.csv``), :mod:`reports.plots` (matplotlib figures), :mod:`reports.report` (the report folder),
:mod:`reports.html` (PNG and self-contained HTML helpers), :mod:`reports.cli` (the click commands).
It imports :mod:`kfold` (labels, metrics, readers) and nothing imports it but :mod:`kf`.
"""
