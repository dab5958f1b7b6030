"""What every script shares: its parser (help, defaults once, near-miss flags), progress off a terminal, and
the permissions of the files it writes."""
import argparse
import io
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from data import check as data_check
from data import demo as data_demo
from data import from_folders as data_from_folders
from data.registry import SETTINGS
from engine import check as engine_check
from engine import demo as engine_demo
from engine import evaluate, train
from retrieval import tables
from utils.checkpoint import atomic_write
from utils.cli import ArgumentParser, explicit_flags
from utils.progress import LineProgress, progress

ROOT = Path(__file__).resolve().parent.parent


def _parsers():
    for dataset in ("sketchy", "tuberlin", "quickdraw", "custom"):
        yield f"train {dataset}", train.build_parser(train.choose_setting(dataset, []), dataset)
    for name, setting in SETTINGS.items():
        yield f"test {name}", evaluate.build_parser(setting)
    yield "engine.demo", engine_demo.build_parser()
    yield "data.demo", data_demo.build_parser()
    yield "data.check", data_check.build_parser()
    yield "engine.check", engine_check.build_parser()
    yield "data.from_folders", data_from_folders.build_parser()
    yield "retrieval.tables", tables.build_parser()
    yield "search_app.py", runpy.run_path(str(ROOT / "search_app.py"))["build_parser"]()


PARSERS = dict(_parsers())


@pytest.mark.parametrize("name", PARSERS)
def test_every_flag_has_help_and_states_its_default_once(name):
    parser = PARSERS[name]
    assert isinstance(parser, ArgumentParser)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings} has no help"
        text = formatter._expand_help(action)
        assert text.lower().count("default") == 1, f"{name}: {action.option_strings}: {text!r}"


@pytest.mark.parametrize("typed,meant", [("--data-root", "--data_root"), ("--batchsize", "--batch_size"),
                                         ("--max-steps-per-epoch", "--max_steps_per_epoch")])
def test_a_mistyped_flag_suggests_the_near_one(typed, meant, capsys):
    parser = PARSERS["train sketchy"]
    with pytest.raises(SystemExit):
        parser.parse_args([typed, "1"])
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {typed} 1 (did you mean {meant} instead of {typed}?)" in err


def test_explicit_flags_are_only_the_typed_ones():
    parser = PARSERS["train sketchy"]
    assert explicit_flags(parser, ["--epochs", "3", "--amp"]) == {"epochs": 3, "amp": True}
    assert explicit_flags(parser, []) == {}


def test_progress_off_a_terminal_is_a_line_per_ten_percent():
    out = io.StringIO()
    bar = progress(total=50, desc="epoch 0", unit="step", file=out)
    assert isinstance(bar, LineProgress)
    for i in range(50):
        bar.set_postfix({"loss": f"{1 / (i + 1):.3f}"})
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert len(lines) == 10 and lines[0].startswith("epoch 0:  10% (5/50 step)") and "100% (50/50" in lines[-1]
    assert lines[-1].endswith("loss 0.020")
    quiet = io.StringIO()
    assert list(progress(range(7), desc="x", file=quiet, leave=False)) == list(range(7))   # a transient bar
    assert len(quiet.getvalue().splitlines()) == 4                                         # a line per 25 %


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert isinstance(progress(total=3, file=Terminal()), tqdm)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umasks_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.bin", lambda fh: fh.write(b"x"))
        (tmp_path / "again.bin").write_bytes(b"old")
        atomic_write(tmp_path / "again.bin", lambda fh: fh.write(b"new"))   # a replaced file too
    finally:
        os.umask(old)
    for name in ("out.bin", "again.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


ENTRY_POINTS = [[script] for script in sorted({s for setting in SETTINGS.values()
                                               for s in (setting.train_script, setting.test_script)})] + \
    [["search_app.py", "--resume_dir", "run"]] + \
    [["-m", module] for module in ("engine.demo", "data.check", "data.demo", "retrieval.tables")]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1] if e[0] == "-m" else e[0])
def test_a_missing_dependency_is_one_sentence(entry, tmp_path):
    """Run outside the environment (``python -S``: no site-packages, so no torch, numpy, ...), every entry point
    says in one line what is missing and how to run it in the environment, without a traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SBKA_DEBUG")}
    proc = subprocess.run([sys.executable, "-S", *entry], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: this Python") and "cannot import" in lines[0], lines[0]
    assert ".venv/bin/activate" in lines[0] and "requirements.txt" in lines[0], lines[0]


def test_a_typo_flag_is_one_error_line():
    """Not argparse's usage dump: the one ``error:`` line of every user error, with the near flag and --help."""
    proc = subprocess.run([sys.executable, "-m", "retrieval.tables", "--runs", "x", "--digts", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: unrecognized arguments: --digts 2 (did you mean --digits instead of "
                                        "--digts?) (`python -m retrieval.tables --help` lists the flags)"]


@pytest.mark.parametrize("given, expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                             ({"GOMP_SPINCOUNT": "300000"}, None)])
def test_idle_openmp_threads_sleep_unless_the_user_chose(given, expected):
    """Importing any package of the project (here the dataset check's, the first import of its entry point) sets
    OMP_WAIT_POLICY=PASSIVE before torch can load, and leaves a user's choice alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, sys, data.check; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **given}, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == [str(expected), "False"], proc.stderr
