"""Shared fixtures: tiny generated competition data, made with the users' own generator.

``KF_THREADS=<n>`` (docs/training.md) sets torch's thread count for the whole
run: kf's ``threads: auto`` follows it in every process, and so does this
process for the tests that call models directly. Tests marked ``trains``
train or run a torch model; CI reruns them with ``KF_THREADS=1``.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest

from kfold.device import forced_threads
from kfold.synth import make_data

if forced_threads():
    import torch

    torch.set_num_threads(forced_threads())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A competition folder: 20 train people (140 images), 6 eval people (42 images), 32x32, with quirks."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    make_data(root, people=20, eval_people=6, size=(32, 32), seed=1, quirks=True)
    return root
