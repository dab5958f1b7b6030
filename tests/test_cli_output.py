"""What every script shares: its parser (help, defaults once, near-miss flags), progress off a terminal, and
the permissions of the files it writes."""
import argparse
import io
import os
import runpy
import stat
from pathlib import Path

import pytest
from tqdm import tqdm

from data import check as data_check
from data import demo as data_demo
from data import from_folders as data_from_folders
from data.registry import SETTINGS
from engine import demo as engine_demo
from engine import train
from retrieval import evaluate, tables
from utils.checkpoint import atomic_write
from utils.cli import ArgumentParser, explicit_flags
from utils.progress import LineProgress, progress


def _parsers():
    for dataset in ("sketchy", "tuberlin", "quickdraw", "custom"):
        yield f"train {dataset}", train.build_parser(train.choose_setting(dataset, []), dataset)
    for name, setting in SETTINGS.items():
        yield f"test {name}", evaluate.build_parser(setting)
    yield "engine.demo", engine_demo.build_parser()
    yield "data.demo", data_demo.build_parser()
    yield "data.check", data_check.build_parser()
    yield "data.from_folders", data_from_folders.build_parser()
    yield "retrieval.tables", tables.build_parser()
    environ = dict(os.environ)                  # the app's module sets OMP_WAIT_POLICY for its own process
    yield "search_app.py", runpy.run_path(str(Path(__file__).resolve().parent.parent / "search_app.py"))["build_parser"]()
    os.environ.clear()
    os.environ.update(environ)


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
