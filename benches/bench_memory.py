"""6. Peak memory (RSS) of a real training run.

kf: ``kf train --config configs/lite0.yaml --fold 0 --set epochs=1`` on the
real set (96x96; builds the train and eval caches in a temporary ``--oof``,
trains 1 fold x 1 epoch, predicts OOF and test with hflip TTA) in a
subprocess; its peak RSS is what ``/usr/bin/time -v`` reports (see :func:`peak_rss`).

Reference: a bare process that imports kf, builds the same pretrained lite0
and runs 3 training steps of batch 32 at 96x96 on random tensors: the memory
any training of this model needs, whatever feeds it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, Context, Row, Stat, standalone

BARE = """
import torch, timm.optim
from kfold.models import create_model
torch.set_num_threads(os.cpu_count() or 1)
m = create_model("tf_efficientnet_lite0", "pypi:efficientnet_lite0", drop_rate=0.2).train()
opt = timm.optim.create_optimizer_v2(m, opt="adamw", lr=1e-3, weight_decay=1e-4)
for _ in range(3):
    loss = torch.nn.functional.cross_entropy(m(torch.randn(32, 3, 96, 96)), torch.randint(0, 18, (32,)))
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
"""


def peak_rss(cmd: list[str], log_path) -> tuple[float, float, int]:
    """Run ``cmd``; return ``(peak RSS in GiB, wall seconds, exit status)`` of that process alone.

    Measured by ``/usr/bin/time -v``, which forks the command from its own
    small process: Linux charges a child's ``ru_maxrss`` with the RSS of the
    process image it was forked from (and exec'd away), so a command started
    straight from this Python process (GiBs after the other benchmarks) would
    report at least that much. Without ``/usr/bin/time``, ``VmHWM`` of
    ``/proc/<pid>/status`` is polled instead.
    """
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    timer = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None
    out = Path(str(log_path) + ".time")
    with open(log_path, "wb") as log:
        t = time.perf_counter()
        if timer:
            rc = subprocess.call([timer, "-v", "-o", str(out), *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=env)
            wall = time.perf_counter() - t
            kib = next(int(ln.rsplit(":", 1)[1]) for ln in out.read_text().splitlines() if "Maximum resident" in ln)
            return kib / 2**20, wall, rc
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        kib = 0
        while p.poll() is None:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                kib = max(kib, int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]))
            except (OSError, StopIteration, ValueError):
                pass
            time.sleep(0.05)
        return kib / 2**20, time.perf_counter() - t, p.returncode


def run(ctx: Context) -> list[Row]:
    if ctx.real_data is None:
        ctx.notes.append("6 memory: the real set was not found; the peak-RSS run was skipped")
        return []
    bare, bare_s, rc = peak_rss([sys.executable, "-c", "import os\n" + BARE], ctx.tmp / "bare.log")
    if rc != 0:
        raise RuntimeError(f"bare training process failed: {(ctx.tmp / 'bare.log').read_text()[-2000:]}")
    sets = ["--set", "epochs=1"] + (["--set", "image_size=[32,32]"] if ctx.quick else [])
    cmd = [sys.executable, "-m", "kf", "train", "--data", str(ctx.real_data), "--oof", str(ctx.tmp / "oof-rss"),
           "--config", "configs/lite0.yaml", "--fold", "0", *sets, "--no-progress"]
    log = ctx.tmp / "kf-train.log"
    rss, wall, rc = peak_rss(cmd, log)
    if rc != 0:
        raise RuntimeError(f"kf train failed ({rc}): {log.read_text()[-2000:]}")
    tail = [ln for ln in log.read_text().splitlines() if "epoch 1/1" in ln]
    ctx.settings["6 kf train run"] = (f"`kf train --config configs/lite0.yaml --fold 0 {' '.join(sets)}` on the real "
                                      f"set: {wall:.0f} s wall" + (f"; {tail[-1].strip()}" if tail else ""))
    size = "32x32 (quick)" if ctx.quick else "96x96"
    return [Row("6 memory", f"peak RSS, kf train lite0 {size}, 1 fold × 1 epoch, real set (caches + TTA "
                            f"predictions) vs a bare lite0 training process", Stat([rss], "GiB", 2),
                Stat([bare], "GiB", 2), "bare lite0 train steps", Stat([rss / bare], "x", 2), "≤ 3 GiB",
                lambda x: x <= 3.0, goal_on="kf", note=f"one run each ({wall:.0f} s and {bare_s:.0f} s wall)")]


if __name__ == "__main__":
    standalone(run)
