"""Library errors name their parameters (kfold.io.ParamError); only the CLI words them with flags.

A guard walks every library module's error messages for a hard-coded ``--flag``;
unit tests call converted functions from Python and through ``kf``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kf.cli import main
from kfold.io import KfError, ParamError, check_writable
from kfold.options import command_flags, flag_errors

ROOT = Path(__file__).resolve().parents[1]
#: the library packages; their click modules map parameters to flags and may name flags
LIBRARY = ("kfold", "ensemble", "submit", "reports")
CLI_MODULES = {"kfold/commands.py", "kfold/options.py", "ensemble/cli.py", "submit/cli.py", "reports/cli.py"}
ERROR_CLASSES = {"KfError", "ParamError"}
FLAG = re.compile(r"--[a-z]")
#: text before a flag that makes it part of a command the user is told to run (an instruction, not a parameter):
#: ``rerun kf folds --force``, ``ray start --head``, ``pip install --no-deps x``, ``make folds with --holdout 0.2``
INSTRUCTION = re.compile(r"(\bkf [a-z-]+|\bray start|\bpip install|\bmake folds with)( [^\s;(),]+)* $")


def flags_in_errors(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, text)`` of each string constant that names a ``--flag`` in an error message of ``source``.

    An error message: any string inside a ``raise`` statement's exception, or an
    argument of a ``KfError(...)`` / ``ParamError(...)`` call anywhere (helpers
    that build the error for a later ``raise``). A flag preceded by an
    instruction (:data:`INSTRUCTION`) is allowed.
    """
    found: dict[int, tuple[int, str]] = {}  # id of the constant -> (line, text): a raise of a KfError(...) call is one
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots = [node.exc]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ERROR_CLASSES:
            roots = node.args
        else:
            continue
        for root in roots:
            for c in ast.walk(root):
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and any(
                        not INSTRUCTION.search(c.value[:m.start()]) for m in FLAG.finditer(c.value)):
                    found[id(c)] = (c.lineno, c.value)
    return sorted(found.values())


def test_the_guard_finds_a_flag_in_an_error_and_allows_parameters_and_instructions():
    assert flags_in_errors('raise KfError(f"--k {k}: need 2 <= K <= number of people ({n})")') == [
        (1, "--k ")]
    assert flags_in_errors('def bad(k):\n    return KfError(f"--set {k}: why")') == [(2, "--set ")]
    assert flags_in_errors('raise ParamError(f"{{k}} {k}: need 2 <= K", "k")') == []
    assert flags_in_errors('raise KfError("x: rerun kf folds --force")\nraise KfError("start `ray start --head`")\n'
                           'raise KfError(f"pypi:{p}: pip install --no-deps {m}")') == []
    assert flags_in_errors('raise KfError("rerun kf folds --force, or pass --overwrite")') != []
    assert flags_in_errors('"""Docstrings name flags: --oof."""\nx = "--oof"') == []


def test_no_library_error_message_names_a_cli_flag():
    found = []
    for pkg in LIBRARY:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel not in CLI_MODULES:
                found += [f"{rel}:{line}: {text!r}" for line, text in flags_in_errors(f.read_text(encoding="utf-8"), rel)]
    assert not found, ("library errors name parameters, not flags (raise kfold.io.ParamError('{param} ...', 'param')):\n"
                       + "\n".join(found))


def test_converted_library_functions_name_their_parameters(tmp_path):
    from kfold.config import load_config, parse_overrides
    from kfold.data import read_train
    from kfold.folds import make_folds, make_holdout
    from reports.report import write_report

    people = pd.DataFrame({"person": ["a", "b", "c"], "gender": [0, 1, 0], "age_band": [0, 1, 2]})
    with pytest.raises(ParamError, match=r"^k 4: need 2 <= K <= number of people \(3\)$"):
        make_folds(people, k=4)
    with pytest.raises(ParamError, match=r"^holdout 1.5: expected a fraction of the people between 0 and 1"):
        make_holdout(people, 1.5)
    f = tmp_path / "taken.csv"
    f.write_text("x\n")
    with pytest.raises(ParamError) as e:
        check_writable(f, overwrite=False)
    assert str(e.value) == f"{f}: already exists (pass overwrite to replace it)"
    with pytest.raises(ParamError) as e:
        write_report([], f, None, top=0)
    assert str(e.value) == f"{f}: exists and is not a folder (out)"
    with pytest.raises(ParamError) as e:
        read_train(tmp_path / "nowhere")
    assert str(e.value) == f"{tmp_path / 'nowhere'}: data folder not found (pass root or set KF_DATA)"
    with pytest.raises(ParamError, match=r"^overrides 'epochs': expected key=value$"):
        parse_overrides(["epochs"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tf_efficientnet_lite0\n")
    with pytest.raises(ParamError, match=r"^overrides epochs: ") as e:
        load_config(cfg, [("epochs", 0)])
    assert isinstance(e.value, KfError)  # callers catching KfError are unaffected
    with pytest.raises(ParamError, match=r"^overrides: unknown key 'epoch'; valid keys: "):
        load_config(cfg, [("epoch", 1)])
    with pytest.raises(KfError, match=rf"^{re.escape(str(cfg))}: epochs: "):  # a file's value names the file
        cfg.write_text("model: tf_efficientnet_lite0\nepochs: 0\n")
        load_config(cfg)


def test_a_command_maps_each_parameter_to_its_own_flag():
    from ensemble.cli import export_cmd, import_cmd
    from kfold.commands import train_cmd
    from submit.cli import submit_cmd

    train = command_flags(train_cmd)
    assert {p: train[p] for p in ("k", "overrides", "configs", "force", "pseudo_threshold", "track", "oof", "oof_dir",
                                  "data", "data_root", "root")} == {
        "k": "--k", "overrides": "--set", "configs": "--config", "force": "--force", "pseudo_threshold": "--pseudo-threshold",
        "track": "--track", "oof": "--oof", "oof_dir": "--oof", "data": "--data", "data_root": "--data", "root": "--data"}
    assert command_flags(submit_cmd)["source"] == "--from"
    assert command_flags(import_cmd)["name"] == "NAME" and command_flags(import_cmd)["test_csvs"] == "--test-csv"
    assert "runs" not in command_flags(export_cmd)  # kf export --run passes run=: its flag_errors block renames runs
    # flag_errors renders its own parameters and leaves the others for the group
    with pytest.raises(ParamError) as e:
        with flag_errors(runs="--run"):
            raise ParamError("{runs} 'x': not under {oof_dir}", "runs", "oof_dir")
    assert str(e.value) == "--run 'x': not under oof_dir" and e.value.render(command_flags(export_cmd)) == \
        "--run 'x': not under --oof"


def kf(*args):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="kf")


def test_the_cli_prints_the_same_error_with_its_flags(tiny_data, tmp_path):
    r = kf("make-data", tmp_path / "d", "--people", 0)
    assert r.exit_code == 2 and r.output.strip() == \
        "error: make-data: need --people >= 1, --eval-people >= 1 and a size of at least 16x16"
    r = kf("make-data", tmp_path / "d", "--noise", 2)
    assert r.exit_code == 2 and r.output.strip() == "error: make-data: --noise 2.0 must be a fraction in 0..1"
    r = kf("report", "--oof", tmp_path / "nowhere", "--top", 0)
    assert r.exit_code == 2 and r.output.strip() == \
        f"error: {tmp_path / 'nowhere'}: folder not found (pass --oof, or train runs with kf train first)"
    assert not (tmp_path / "d").exists()
    oof = tmp_path / "oof"
    r = kf("folds", "--data", tiny_data, "--oof", oof, "--holdout", 0.01)  # kfold.folds.make_holdout(holdout=)
    assert r.exit_code == 2 and r.output.strip() == \
        "error: --holdout 0.01: withholds 0 of 20 people; keep at least one on each side"
    assert kf("folds", "--data", tiny_data, "--oof", oof, "--k", 2).exit_code == 0
    r = kf("folds", "--data", tiny_data, "--oof", oof, "--k", 3)  # ensure_folds(oof_dir=, force=)
    assert r.exit_code == 2 and "use another --oof folder, or --force to rewrite it (runs trained" in r.output


def test_kf_train_on_mismatched_folds_points_to_kf_folds_force(tiny_data, tmp_path):
    """kf train --force retrains runs; the folds.csv mismatch names the command that rewrites folds.csv."""
    oof = tmp_path / "oof"
    assert kf("folds", "--data", tiny_data, "--oof", oof, "--k", 2).exit_code == 0
    r = kf("train", "--data", tiny_data, "--oof", oof, "--k", 3, "--config", ROOT / "configs" / "lite0.yaml")
    assert r.exit_code == 2 and "use another --oof folder, or kf folds --force to rewrite it (runs trained" in r.output


def test_a_ray_address_is_checked_before_ray_init_and_without_ray(tiny_data, tmp_path):
    """A malformed address or one where nothing listens is one line, at once (ray.init would retry for minutes)."""
    import socket

    from kfold.executors import check_address

    with pytest.raises(ParamError, match=r"^address not-a-host: expected auto or host:port"):
        check_address("not-a-host")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ParamError, match=rf"^address 127\.0\.0\.1:{free}: cannot connect"):
        check_address(f"127.0.0.1:{free}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_address(f"127.0.0.1:{s.getsockname()[1]}")
        check_address(f"ray://127.0.0.1:{s.getsockname()[1]}")
    for a in (None, "auto", "local"):
        check_address(a)
    r = kf("train", "--data", tiny_data, "--oof", tmp_path / "oof", "--config", ROOT / "configs" / "lite0.yaml",
           "--address", "auto")
    assert r.exit_code == 2 and r.output.startswith("error: Invalid value for --address: needs --executor ray")
    assert not (tmp_path / "oof").exists()


def test_kf_folds_force_names_the_runs_left_on_the_old_folds(tiny_data, tmp_path):
    import json

    oof = tmp_path / "oof"
    assert kf("folds", "--data", tiny_data, "--oof", oof, "--k", 2).exit_code == 0
    (oof / "old").mkdir()
    (oof / "old" / "run.json").write_text(json.dumps({"name": "old", "folds_fingerprint": "x", "finished": True}))
    r = kf("folds", "--data", tiny_data, "--oof", oof, "--k", 3, "--force")
    assert r.exit_code == 0 and "warning: trained on the old folds: old; kf ensemble will not blend them" in r.output
    r = kf("submit", "--oof", tmp_path / "nothere", "--from", "old", "--out", tmp_path / "s.csv")
    assert r.exit_code == 2 and "nothere: folder not found; check --oof" in r.output
    r = kf("import", "mate", "--oof", tmp_path / "nofolds", "--oof-csv", oof / "folds.csv", "--test-csv",
           oof / "folds.csv", "--who", "a", "--where", "b")
    assert r.exit_code == 2 and "nofolds/folds.csv: file not found; an import is checked against the folds" in r.output
