"""kf: the ``kf`` command line, the one package above the stage packages.

``kf.cli.main`` is the top-level click group (the ``kf`` console script and
``python -m kf``). It lists the click commands of :mod:`kfold.commands`,
:mod:`ensemble.cli`, :mod:`submit.cli` and :mod:`reports.cli`; no stage
package imports ``kf``, so the CLI adds no import cycle (docs/architecture.md).
"""
