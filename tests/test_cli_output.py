"""What every script shares: its parser (help, defaults once, near-miss flags), progress off a terminal, and
the permissions of the files it writes."""
import argparse
import io
import os
import runpy
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from data import check as data_check
from data import demo as data_demo
from data import from_folders as data_from_folders
from data.registry import SETTINGS
from engine import check as engine_check
from engine import demo as engine_demo
from engine import flags
from retrieval import tables
from utils import runtime
from utils.checkpoint import atomic_write
from utils.cli import ArgumentParser, explicit_flags
from utils.progress import LineProgress, progress

ROOT = Path(__file__).resolve().parent.parent


def _parsers():
    for dataset in ("sketchy", "tuberlin", "quickdraw", "custom"):
        yield f"train {dataset}", flags.build_train_parser(flags.choose_setting(dataset, []), dataset)
    for name, setting in SETTINGS.items():
        yield f"test {name}", flags.build_test_parser(setting)
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
    [["-m", module] for module in ("engine.demo", "data.check", "data.demo")]


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


# Runs an entry point (argv after the interpreter) with torch, torchvision, timm and scikit-learn made unimportable:
# what it does before the first of them loads is what a user waits for on a mistyped flag or --help.
WITHOUT_TORCH = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "sklearn"):
            raise ImportError(f"{name} was imported before the flags were read")
sys.meta_path.insert(0, Refuse())
entry = sys.argv[1:]
if entry[0] == "-m":
    sys.argv = [entry[1], *entry[2:]]
    runpy.run_module(entry[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = entry
    runpy.run_path(entry[0], run_name="__main__")
"""
def test_the_table_needs_only_the_standard_library(tmp_path):
    """``python -m retrieval.tables`` reads results.json files: it runs without site-packages (``-S``) and gets as
    far as the user's own mistake (a folder with no results)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SBKA_DEBUG")}
    proc = subprocess.run([sys.executable, "-S", "-m", "retrieval.tables", "--runs", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: no results.json under {tmp_path}"), proc.stderr


CLI_ENTRY_POINTS = ENTRY_POINTS + [["-m", "retrieval.tables"], ["-m", "engine.check"], ["-m", "engine.reproduce"],
                                   ["-m", "data.from_folders", "ROOT"]]


@pytest.mark.parametrize("entry", CLI_ENTRY_POINTS, ids=lambda e: e[1] if e[0] == "-m" else e[0])
def test_flags_are_read_before_torch_loads(entry):
    """A mistyped flag and --help answer without loading torch (seconds on a busy machine): every entry point
    parses its flags first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SBKA_DEBUG")}
    typo = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *entry, "--no_such_flag"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2, typo.stderr
    assert typo.stderr.startswith("error: unrecognized arguments: --no_such_flag") and \
        len(typo.stderr.splitlines()) == 1, typo.stderr
    helped = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *entry, "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and helped.stdout.startswith("usage:"), helped.stderr


def test_a_typo_flag_is_one_error_line():
    """Not argparse's usage dump: the one ``error:`` line of every user error, with the near flag and --help."""
    proc = subprocess.run([sys.executable, "-m", "retrieval.tables", "--runs", "x", "--digts", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: unrecognized arguments: --digts 2 (did you mean --digits instead of "
                                        "--digts?) (`python -m retrieval.tables --help` lists the flags)"]


SPIN = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n    pass\n"
OPENMP_STATE = ("import os, sys, {module}; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), "
                "'torch' in sys.modules)")


def openmp_state(module: str, given: dict, busy: bool) -> list[str]:
    """OMP_WAIT_POLICY, GOMP_SPINCOUNT and whether torch loaded, after importing ``module`` in a fresh process,
    with ``given`` in its environment and (``busy``) two processes spinning beside it."""
    env = {k: v for k, v in os.environ.items() if k not in (*runtime.OPENMP_VARIABLES, runtime.AUTO_MARK)}
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 if busy else 0)]
    try:
        time.sleep(0.3 if busy else 0)
        proc = subprocess.run([sys.executable, "-c", OPENMP_STATE.format(module=module)], cwd=ROOT,
                              env={**env, **given}, capture_output=True, text=True, timeout=120)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("given, expected", [({"OMP_WAIT_POLICY": "ACTIVE"}, ["ACTIVE", "None"]),
                                             ({"GOMP_SPINCOUNT": "300000"}, ["None", "300000"])])
def test_a_users_openmp_setting_is_kept(given, expected):
    """Importing any package of the project (here the dataset check's, the first import of its entry point)
    leaves the user's OMP_WAIT_POLICY or GOMP_SPINCOUNT alone, and loads no torch."""
    assert openmp_state("data.check", given, busy=True) == [*expected, "False"]


def test_idle_openmp_threads_sleep_on_a_busy_machine():
    """Beside two spinning processes (2 runnable threads besides this one), idle threads sleep."""
    assert openmp_state("data.check", {}, busy=True) == ["PASSIVE", "None", "False"]


def test_the_apps_idle_threads_always_sleep():
    """The app sleeps between queries whatever the load: its package sets PASSIVE after the utils import chose,
    before torch loads."""
    assert openmp_state("utils, app", {}, busy=False) == ["PASSIVE", "None", "False"]


@pytest.fixture
def fresh_choice(monkeypatch):
    """prepare_process as in a new process before torch loads, reading ``others`` runnable threads."""
    for name in (*runtime.OPENMP_VARIABLES, runtime.AUTO_MARK):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)       # put back after the test
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(runtime, "_decided", False)

    def choose(others, environ=None, sleep=False):
        for name, value in (environ or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(runtime, "other_runnable", lambda: others)
        runtime.prepare_process(sleep=sleep)
        return {k: os.environ[k] for k in (*runtime.OPENMP_VARIABLES, runtime.AUTO_MARK) if k in os.environ}
    return choose


def test_openmp_setting_follows_the_load_at_start(fresh_choice):
    assert fresh_choice(0.0) == {}                                  # quiet: OpenMP's own default, untouched
    runtime._decided = False
    assert fresh_choice(2.0) == {"OMP_WAIT_POLICY": "PASSIVE", runtime.AUTO_MARK: "OMP_WAIT_POLICY=PASSIVE"}


def test_a_child_chooses_again_but_keeps_the_users_setting(fresh_choice):
    marked = {"OMP_WAIT_POLICY": "PASSIVE", runtime.AUTO_MARK: "OMP_WAIT_POLICY=PASSIVE"}
    assert fresh_choice(0.0, marked) == {}       # its parent started on a busy machine; this one starts quietly
    runtime._decided = False
    assert fresh_choice(2.0, {"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_app_overrides_an_automatic_choice(fresh_choice):
    assert fresh_choice(0.0) == {}
    assert fresh_choice(0.0, sleep=True) == {"OMP_WAIT_POLICY": "PASSIVE",
                                             runtime.AUTO_MARK: "OMP_WAIT_POLICY=PASSIVE"}


@pytest.mark.parametrize("others, sleep, expected", [(0.0, False, None), (0.4, False, None),
                                                     (0.6, False, runtime.SLEEP), (3.0, False, runtime.SLEEP),
                                                     (None, False, runtime.SLEEP), (0.0, True, runtime.SLEEP)])
def test_openmp_choice_follows_the_other_runnable_threads(others, sleep, expected):
    assert runtime.openmp_choice(others, sleep) == expected


def test_other_runnable_threads_are_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert runtime.other_runnable(samples=3, interval_s=0, stat=str(stat)) == 3.0
    stat.write_text("cpu  1 2 3\n")
    assert runtime.other_runnable(samples=3, interval_s=0, stat=str(stat)) is None
    assert runtime.other_runnable(samples=3, interval_s=0, stat=str(tmp_path / "absent")) is None


@pytest.mark.parametrize("environ, chose", [({}, False), ({"OMP_WAIT_POLICY": "ACTIVE"}, True),
                                            ({"OMP_WAIT_POLICY": "PASSIVE", "SBKA_OPENMP_AUTO": "OMP_WAIT_POLICY=PASSIVE"},
                                             False),
                                            ({"OMP_WAIT_POLICY": "ACTIVE", "SBKA_OPENMP_AUTO": "OMP_WAIT_POLICY=PASSIVE"},
                                             True),
                                            ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000",
                                              "SBKA_OPENMP_AUTO": "OMP_WAIT_POLICY=PASSIVE"}, True)])
def test_only_an_unmarked_or_changed_setting_is_the_users(environ, chose):
    assert runtime.user_chose(environ) is chose
