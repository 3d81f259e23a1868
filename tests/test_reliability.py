"""Reliability: atomic writes (audited in the source and killed mid-write), no code from checkpoints, determinism.

The kill/resume tests of training are in tests/test_kill.py; the corpus of
bad inputs is in tests/test_bad_inputs.py; docs/reliability.md lists which
test shows which guarantee.
"""
from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_inputs import CONFIG, ENSEMBLE, FOLDS, N_PEOPLE, WS, RunsCode, fill, invoke, write_fake_run

from kfold.io import KfError, atomic_write, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kfold", "ensemble", "submit")


def python(code: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KF_CRASH_AT"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    if crash_at:
        env["KF_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


# --------------------------------------------------------------------------- atomic writes

def test_a_failure_in_the_middle_of_a_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "submission.csv"
    out.write_bytes(b"ImageID,ans\nold.jpg,3\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(out) as fh:
            fh.write("ImageID,ans\n" + "new.jpg,1\n" * 1000)
            fh.flush()
            raise RuntimeError("disk full")
    assert out.read_bytes() == b"ImageID,ans\nold.jpg,3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
    with atomic_write(out) as fh:  # and a write that finishes replaces it
        fh.write("ImageID,ans\nnew.jpg,1\n")
    assert out.read_bytes() == b"ImageID,ans\nnew.jpg,1\n"


def test_a_process_killed_mid_write_leaves_the_old_file_and_only_a_hidden_temporary(tmp_path):
    out = tmp_path / "folds.csv"
    out.write_bytes(b"old\n")
    code = (f"from kfold.io import atomic_write\n"
            f"with atomic_write({str(out)!r}) as fh:\n"
            f"    fh.write('new\\n' * 100000)\n")
    r = python(code, crash_at="write:folds.csv")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert out.read_bytes() == b"old\n"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[-1] == "folds.csv" and all(n.startswith(".folds.csv.") and n.endswith(".tmp") for n in left[:-1])
    assert len(left) == 2  # the temporary held the new bytes; the target name never did


# (file, enclosing function, call): the only writes not made through kfold.io.atomic_write, and why
WRITES_ALLOWED = {
    ("kfold/io.py", "atomic_write", "fdopen"),   # the atomic writer itself
    ("kfold/cache.py", "build_cache", "open_memmap"),  # own temporary + fsync + os.replace (tests below)
    ("kfold/synth.py", "_save", "save"),          # kf make-data: images of a new data folder, train.csv written last
    ("kfold/synth.py", "make_data", "save"),
    ("kfold/synth.py", "make_data", "write_bytes"),  # the generated junk files (._mask1.jpg)
}


def _calls(path: Path):
    """Yield ``(enclosing function, call node)`` for every call in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                yield func, child
            yield from walk(child, f)
    yield from walk(tree, "<module>")


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _owner(call: ast.Call) -> str:
    f = call.func
    return f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""


def _into_memory_or_handle(call: ast.Call) -> bool:
    """The call writes to an in-memory buffer or an atomic_write handle (``fh``, ``buf``), or returns text."""
    target = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg in ("path_or_buf", "fname", "f")), None)
    if _owner(call) in ("torch", "json", "yaml", "pickle", "joblib") and _name(call) in ("save", "dump"):
        target = call.args[1] if len(call.args) > 1 else None  # save(obj, f) / dump(obj, f)
    return target is None or (isinstance(target, ast.Name) and target.id in ("fh", "buf"))


def test_every_file_kf_writes_goes_through_atomic_write():
    """Source audit: open(..., 'w'), to_csv(path), np.save, torch.save, savefig, write_text, ... only into atomic_write."""
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            for func, call in _calls(path):
                name = _name(call)
                if (rel, func, name) in WRITES_ALLOWED:
                    continue
                if name == "open" and isinstance(call.func, ast.Name):
                    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
                    if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                        offenders.append(f"{rel}:{call.lineno} open(..., {mode.value!r}) in {func}")
                elif name in ("write_text", "write_bytes", "to_pickle", "open_memmap", "fdopen", "memmap") \
                        or (_owner(call), name) in {("shutil", "copy"), ("shutil", "copy2"), ("shutil", "copyfile"),
                                                    ("shutil", "move"), ("os", "rename")}:
                    offenders.append(f"{rel}:{call.lineno} {name} in {func}")
                elif name in ("to_csv", "to_json", "to_parquet", "savetxt", "savefig", "save", "savez", "dump") \
                        and not _into_memory_or_handle(call):
                    offenders.append(f"{rel}:{call.lineno} {name} to a path in {func}")
    assert offenders == [], offenders


def test_the_audit_finds_a_direct_write(tmp_path):
    """The audit above can fail: a module that writes a CSV straight to a path is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(df, p):\n    df.to_csv(p)\n    open(p, 'w').write('x')\n    np.save(p, df)\n")
    found = [(func, _name(c), _into_memory_or_handle(c)) for func, c in _calls(bad)]
    assert ("f", "to_csv", False) in found and ("f", "save", False) in found
    assert any(n == "open" for _, n, _ in found)


def test_a_killed_cache_build_leaves_no_cache_file_and_the_next_build_is_complete(tmp_path, tiny_data):
    from kfold.cache import build_cache, load_image

    images = sorted((tiny_data / "eval" / "images").iterdir())[:10]
    cache = tmp_path / "cache"
    code = (f"from kfold.cache import build_cache\n"
            f"build_cache({[str(p) for p in images]!r}, (24, 24), {str(cache)!r}, n_jobs=1)\n")
    r = python(code, crash_at="write:cache")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert list(cache.glob("*.npy")) == []  # only a hidden temporary
    assert [p.name.startswith(".") and p.name.endswith(".tmp") for p in cache.iterdir()] == [True]
    arr = build_cache(images, (24, 24), cache, n_jobs=1)
    np.testing.assert_array_equal(arr[7], load_image(images[7], (24, 24)))
    assert len(list(cache.glob("*.npy"))) == 1


def test_a_failed_cache_rename_leaves_no_file_and_a_damaged_cache_is_one_error_line(tmp_path, tiny_data, monkeypatch):
    from kfold import cache as C

    images = sorted((tiny_data / "eval" / "images").iterdir())[:5]
    real = os.replace

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(C.os, "replace", boom)
    with pytest.raises(KfError, match=r"16x16_5_\w+\.npy: cannot write: disk full"):  # one line naming the cache file
        C.build_cache(images, (16, 16), tmp_path, n_jobs=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(C.os, "replace", real)
    C.build_cache(images, (16, 16), tmp_path, n_jobs=1)
    (target,) = tmp_path.glob("*.npy")
    target.write_bytes(target.read_bytes()[:300])  # damaged on disk after the fact
    with pytest.raises(KfError, match=rf"{target.name}: damaged image cache .*delete it and rerun"):
        C.build_cache(images, (16, 16), tmp_path, n_jobs=1)


# --------------------------------------------------------------------------- no code from files

def evil_checkpoint(path: Path, marker: Path, key: str = "state_dict") -> Path:
    """A real state_dict with an object beside it whose unpickling would create ``marker``."""
    import timm

    sd = timm.create_model("test_efficientnet", num_classes=18).state_dict()
    torch.save({key: sd, "note": RunsCode(marker)}, path)
    return path


def test_the_evil_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    """Guards the tests below: without weights_only the object is run (it creates the marker)."""
    marker = tmp_path / "PWNED"
    evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)["note"].close()
    assert marker.exists()


def test_read_state_dict_refuses_a_pickled_object_without_running_it(tmp_path):
    from kfold.models import read_state_dict

    marker = tmp_path / "PWNED"
    path = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(KfError, match=r"evil.pt: not a loadable torch weights file \(UnpicklingError"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.fixture
def small(tiny_data, tmp_path) -> WS:
    ws = WS(tmp_path / "ws")
    shutil.copytree(tiny_data, ws.data)
    lines = ws.train_csv.read_text(encoding="utf-8").splitlines()
    ws.train_csv.write_text("\n".join(lines[:N_PEOPLE + 1]) + "\n", encoding="utf-8")
    ws.cfg.write_text(CONFIG)
    return ws


def test_resume_refuses_a_last_pt_holding_a_pickled_object_without_running_it(small):
    from kfold.config import load_config
    from kfold.data import load_data
    from kfold.train import prepare_run

    run = prepare_run(load_config(small.cfg), load_data(small.data, small.oof, k=2), small.oof, force=False)
    (run / "fold0").mkdir()
    marker = small.root / "PWNED"
    evil_checkpoint(run / "fold0" / "last.pt", marker, key="model")
    r = invoke("train", "--data", str(small.data), "--oof", str(small.oof), "--k", "2", "--config", str(small.cfg),
               "--fold", "0", "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [f"error: {run / 'fold0' / 'last.pt'}: not a loadable torch weights file "
                                     "(UnpicklingError; kf loads only tensors, with weights_only=True)"]
    assert not marker.exists()
    assert not (run / "fold0" / "result.json").exists()


def test_predict_refuses_a_best_pt_holding_a_pickled_object_without_running_it(small):
    from kfold.config import load_config

    run = small.oof / "evil_run"
    (run / "fold0").mkdir(parents=True)
    write_json({"name": "evil_run", "kind": "run", "config": load_config(small.cfg).to_dict(), "finished": True}, run / "run.json")
    marker = small.root / "PWNED"
    evil_checkpoint(run / "fold0" / "best.pt", marker, key="model")
    out = small.root / "probs.csv"
    r = invoke("predict", "evil_run", "--oof", str(small.oof), "--images", str(small.data / "eval" / "images"),
               "--out", str(out))
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == [f"error: {run / 'fold0' / 'best.pt'}: not a loadable torch weights file "
                                     "(UnpicklingError; kf loads only tensors, with weights_only=True)"]
    assert not marker.exists() and not out.exists()


def test_no_loader_can_run_code_from_a_file():
    """Source audit: torch.load always with weights_only=True; no pickle, joblib.load, np.load(allow_pickle=True),
    pd.read_pickle or yaml.load/unsafe_load anywhere in kf (ensemble specs and run files are JSON)."""
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                    if {"pickle", "dill", "cloudpickle", "marshal", "shelve", "_pickle"} & set(n.split(".")[0] for n in names if n):
                        offenders.append(f"{rel}:{node.lineno} imports {names}")
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = getattr(node.func.value, "id", "")
                kw = {k.arg: k.value for k in node.keywords}
                if owner == "torch" and node.func.attr == "load":
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        offenders.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
                if (owner, node.func.attr) in {("joblib", "load"), ("pd", "read_pickle"), ("yaml", "load"),
                                               ("yaml", "unsafe_load"), ("yaml", "full_load")}:
                    offenders.append(f"{rel}:{node.lineno} {owner}.{node.func.attr}")
                if owner == "np" and node.func.attr == "load":
                    ap = kw.get("allow_pickle")
                    if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                        offenders.append(f"{rel}:{node.lineno} np.load(allow_pickle=...)")
    assert offenders == [], offenders


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_data_gives_the_same_folds_ensemble_and_submission_bytes(small):
    """Folds, every ensemble method (with biases) and the submission: byte-identical when rerun (CPU)."""
    outputs = []
    for attempt in ("one", "two"):
        oof = small.root / f"oof_{attempt}"
        r = invoke(*fill(FOLDS, {**small.places(), "oof": str(oof)})[:-1], "3")  # K=3: stacking's nested fits need it
        assert r.exit_code == 0, r.output
        ids = pd.read_csv(small.info_csv, dtype=str)["ImageID"].tolist()
        for i, name in enumerate(("a", "b", "c")):
            write_fake_run(oof, name, i, ids)
        r = invoke(*fill(ENSEMBLE, {**small.places(), "oof": str(oof)}), "--method", "all", "--bias")
        assert r.exit_code == 0, r.output
        sub = small.root / f"submission_{attempt}.csv"
        r = invoke("submit", "--data", str(small.data), "--oof", str(oof), "--from", "ensemble/caruana+bias", "--out", str(sub))
        assert r.exit_code == 0, r.output
        files = {str(p.relative_to(oof)): p.read_bytes() for p in sorted(oof.rglob("*")) if p.is_file()}
        outputs.append((files, sub.read_bytes()))
    (a, sub_a), (b, sub_b) = outputs
    assert sorted(a) == sorted(b)
    assert "ensemble/stacking+bias/test.csv" in a and "ensemble/caruana/oof.csv" in a and "folds.csv" in a
    assert [f for f in a if a[f] != b[f]] == []
    assert sub_a == sub_b
    assert read_json(small.root / "oof_one" / "ensemble" / "caruana+bias.json")["members"] == ["a", "b", "c"]


def test_a_killed_cache_builds_temporary_is_removed_by_the_next_build(tmp_path):
    from kfold.cache import remove_stale_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".96x96_10_abc.npy.{dead_pid}.tmp"
    live = tmp_path / f".96x96_10_abc.npy.{os.getpid()}.tmp"
    stale.write_bytes(b"x" * 10)
    live.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_a_bad_image_in_a_parallel_cache_build_is_one_error_line_not_an_abort(tmp_path):
    """Threads still decoding when the error surfaces used to abort the process at exit (status 134)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(600):  # 10 chunks of 64, so 2 threads are busy when chunk 0 fails
        p = tmp_path / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(p, quality=90)
        images.append(p)
    images[1].write_bytes(images[1].read_bytes()[:300])  # truncated
    code = ("import sys\nfrom kfold.cache import build_cache\nfrom kfold.io import KfError\n"
            f"try:\n    build_cache({[str(p) for p in images]!r}, (64, 64), {str(tmp_path / 'cache')!r})\n"
            "except KfError as e:\n    print(f'error: {e}', file=sys.stderr)\n    sys.exit(2)\n")
    r = python(code)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: {images[1]}: cannot decode image (Truncated File Read)"
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no temporary
