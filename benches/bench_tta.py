"""3. TTA: kf's batched hflip TTA vs twice the plain inference, and vs ttach's wrapper.

kf: ``kfold.tta.predict_array(tta="hflip")`` (both views of a batch in one
forward pass, softmax per view, mean) over cached 96x96 images, lite0 in
channels_last (kf's default), ``eval_batch_size`` 128 (64 images x 2 views
per pass).

References, interleaved repeat by repeat:

* 2 x ``predict_array(tta="none")``: the cost of two plain passes (goal:
  batched TTA within 5 % of it);
* ttach's ``ClassificationTTAWrapper(model, hflip_transform(), "mean")``
  over the same normalised batches of 128, softmax after: ttach's own loop,
  one forward pass per view.

Also: plain inference with an eval batch of 64 vs 128.
"""
from __future__ import annotations

import time

from common import Context, Row, Stat, ratios, standalone


def run(ctx: Context) -> list[Row]:
    import torch
    import ttach

    from kfold.augment import to_model_input
    from kfold.models import create_model
    from kfold.tta import predict_array

    n = 256 if ctx.quick else 512
    bs = 128
    images, _, src = ctx.images96(n)
    cpu = torch.device("cpu")
    model = create_model("tf_efficientnet_lite0", "none").eval().to(memory_format=torch.channels_last)
    mean = std = (0.5, 0.5, 0.5)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    wrapper = ttach.ClassificationTTAWrapper(model, ttach.aliases.hflip_transform(), merge_mode="mean")

    def kf_hflip():
        return predict_array(model, images, mean, std, cpu, "hflip", bs, channels_last=True)

    def plain():
        return predict_array(model, images, mean, std, cpu, "none", bs, channels_last=True)

    def plain64():
        return predict_array(model, images, mean, std, cpu, "none", bs // 2, channels_last=True)

    @torch.no_grad()
    def ttach_loop():
        out = []
        for s in range(0, n, bs):
            x = to_model_input(torch.from_numpy(images[s:s + bs].copy()).permute(0, 3, 1, 2), m, m, cpu, True)
            out.append(torch.softmax(wrapper(x), 1))
        return torch.cat(out)

    kf_hflip(), plain(), ttach_loop(), plain64()  # warm-up
    kf, two, tt, half = [], [], [], []
    for _ in range(ctx.repeats):
        t = time.perf_counter()
        plain64()
        half.append(time.perf_counter() - t)
        t = time.perf_counter()
        kf_hflip()
        kf.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain()
        plain()
        two.append(time.perf_counter() - t)
        t = time.perf_counter()
        ttach_loop()
        tt.append(time.perf_counter() - t)
    what = f"lite0 96x96, {n} {src} images, batch {bs}"
    ips = lambda ts: [n / t for t in ts]  # noqa: E731
    return [
        Row("3 TTA", f"{what}: kf batched hflip vs 2 × plain inference", Stat(ips(kf), "img/s", 0),
            Stat(ips(two), "img/s", 0), "2 × plain", Stat(ratios(kf, two), "x", 3), "≤ 1.05× the time",
            lambda x: x <= 1.05, note="img/s = images (each with its 2 views) per second"),
        Row("3 TTA", f"{what}: kf batched hflip vs ttach ClassificationTTAWrapper loop", Stat(ips(kf), "img/s", 0),
            Stat(ips(tt), "img/s", 0), "ttach", Stat(ratios(kf, tt), "x", 3), note="ratio = kf time / ttach time"),
        Row("3 TTA", f"lite0 96x96, {n} {src} images: plain inference, eval batch {bs // 2} vs {bs}",
            Stat(ips(half), "img/s", 0), Stat([n / (t / 2) for t in two], "img/s", 0), f"batch {bs}",
            Stat([h / (t / 2) for h, t in zip(half, two)], "x", 2), note=f"ratio = batch {bs // 2} time / batch {bs} time"),
    ]


if __name__ == "__main__":
    standalone(run)
