"""``python -m engine.reproduce``: the whole table from generated trees of all four settings, two seeds, tiny
runs; a SIGKILL and a rerun give the same table.csv; a damaged folder is repaired by doing only what is missing.

One uninterrupted reproduce is shared by the module (16 subprocesses); the other tests copy its folders.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import reproduce
from retrieval.tables import COLUMNS, ROW_ONE_TO_ONE, column_name
from tests.fixtures import make_tree
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("sketchy_zeroshot1", "sketchy_zeroshot2", "tuberlin_zeroshot", "quickdraw_zeroshot")
# Each run as small as the smoke path allows: one step per epoch at 32 px, no loader workers, no figures.
TINY = ["--", "--img_size", "32", "--max_steps_per_epoch", "1", "--workers", "0", "--no_figures"]


def make_trees(root: Path) -> Path:
    make_tree(root, "sketchy")
    make_tree(root, "sketchy", split_dir="zeroshot2", seed=1)
    make_tree(root, "tuberlin")
    make_tree(root, "quickdraw", cid_mask=False)
    return root


def command(data: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.reproduce", "--smoke", "--seeds", "0", "1", "--data_root", str(data),
            "--runs", str(runs), "--gpus", "cpu", "--jobs", "2", *extra, *TINY]


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def run_reproduce(data: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(data, runs, *extra), cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=1800)


def summary(stdout: str) -> dict[str, str]:
    """``{"sketchy_zeroshot1/seed0": "done  results written ...", ...}`` from the summary block."""
    block = stdout.split("\nsummary:\n", 1)[1]
    lines = {}
    for line in block.splitlines():
        if line.startswith("  ") and "/seed" in line:
            name, rest = line.strip().split("  ", 1)
            lines[name] = rest
    return lines


def new_log_part(log: Path, before: str) -> str:
    text = log.read_text()
    assert text.startswith(before)
    return text[len(before):]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_trees(tmp_path_factory.mktemp("reproduce_data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted reproduce: its data, runs folder and output."""
    runs = tmp_path_factory.mktemp("reproduce") / "runs"
    done = run_reproduce(data, runs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return data, runs, done.stdout


def copy_runs(runs: Path, to: Path, names=SETTINGS) -> Path:
    for name in names:
        shutil.copytree(runs / name, to / name)
    return to


def test_whole_table_with_two_seeds(reference):
    data, runs, out = reference
    lines = summary(out)
    assert sorted(lines) == sorted(f"{s}/seed{k}" for s in SETTINGS for k in (0, 1))
    assert all(v.startswith("done  results written to") for v in lines.values()), lines
    with open(runs / "table.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    ours = rows[ROW_ONE_TO_ONE]
    for setting, metric in COLUMNS:
        assert ours[f"{column_name(setting, metric)} n"] == "2"
        assert 0.0 <= float(ours[column_name(setting, metric)]) <= 1.0
    assert len(rows) > 3                                 # the published rows are there too
    assert (runs / "table.md").is_file() and (runs / "table.tex").is_file()
    text = (runs / "table.csv").read_text()
    assert str(runs) not in text and str(data) not in text
    for name in SETTINGS:
        for seed in (0, 1):
            folder = runs / name / f"seed{seed}"
            recorded = json.loads((folder / "args.json").read_text())
            assert recorded["args"]["seed"] == seed and recorded["args"]["savedir"] == str(folder)
            assert recorded["setting"] == name.replace("_", "/", 1) and recorded["version"]
            log = (folder / reproduce.LOG_FILE).read_text()
            assert "train on CPU" in log and "test on CPU" in log and "results written to" in log
    # the same command again does nothing but the table
    again = run_reproduce(data, runs, "--dry_run")
    assert again.returncode == 0
    assert again.stdout.count(": skip (training finished (2 epochs); results.json is current)") == 8


def test_sigkill_then_rerun_gives_the_same_table(reference, tmp_path):
    """Killed (the whole process group, as a reboot would) during a training, then rerun: the table.csv is
    byte-identical to the uninterrupted run's. Three settings' folders are copied from the uninterrupted
    reproduce, so the kill lands in the middle of the fourth."""
    data, runs, _ = reference
    mine = copy_runs(runs, tmp_path / "runs", SETTINGS[:3])
    target = mine / "quickdraw_zeroshot" / "seed0" / "checkpoint.pth.tar"
    proc = subprocess.Popen(command(data, mine), cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(target, map_location="cpu", weights_only=True)["epoch"] == 1   # killed mid-run
    assert not (mine / "table.csv").exists()
    rerun = run_reproduce(data, mine)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    lines = summary(rerun.stdout)
    assert lines["quickdraw_zeroshot/seed0"].startswith("resumed")
    assert lines["sketchy_zeroshot1/seed0"].startswith("skipped")
    assert (mine / "table.csv").read_bytes() == (runs / "table.csv").read_bytes()


def test_damaged_folders_are_repaired_by_doing_only_what_is_missing(reference, tmp_path, capsys):
    data, runs, _ = reference
    mine = copy_runs(runs, tmp_path / "runs")
    unfinished = mine / "sketchy_zeroshot1" / "seed1"       # the checkpoint of a run stopped after epoch 0
    ckpt = torch.load(unfinished / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    ckpt["epoch"] = 1
    torch.save(ckpt, unfinished / "checkpoint.pth.tar")
    (unfinished / "model_best.pth.tar").unlink()
    untested = mine / "tuberlin_zeroshot" / "seed0"
    (untested / "results.json").unlink()
    foreign = mine / "sketchy_zeroshot2" / "seed0"           # a run made with other flags: refused, not mixed
    ckpt = torch.load(foreign / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    ckpt["args"]["lr"] = 0.5
    torch.save(ckpt, foreign / "checkpoint.pth.tar")
    logs = {p: (p / reproduce.LOG_FILE).read_text() for p in (unfinished, untested)}

    assert reproduce.main(command(data, mine, "--dry_run")[3:]) == 1          # one run would fail
    plan = capsys.readouterr().out
    assert "sketchy_zeroshot1/seed1: resume + test (unfinished run: resume from epoch 1 of 2; test: after" in plan
    assert "tuberlin_zeroshot/seed0: test (training finished (2 epochs); test: no results.json)" in plan
    assert "sketchy_zeroshot2/seed0: fail: " in plan and "--lr 0.0001 (the run has 0.5)" in plan
    assert plan.count(": skip (") == 5

    rerun = run_reproduce(data, mine)
    assert rerun.returncode == 1                              # one run failed; the others went on
    lines = summary(rerun.stdout)
    assert lines["sketchy_zeroshot1/seed1"].startswith("resumed")
    assert lines["tuberlin_zeroshot/seed0"].startswith("done (test only)")
    assert lines["sketchy_zeroshot2/seed0"].startswith("failed")
    assert sum(v.startswith("skipped") for v in lines.values()) == 5
    resumed = new_log_part(unfinished / reproduce.LOG_FILE, logs[unfinished])
    assert "continuing at epoch 1" in resumed and "epoch 1: loss" in resumed and "epoch 0: loss" not in resumed
    assert "test on CPU" in resumed and (unfinished / "model_best.pth.tar").is_file()
    tested = new_log_part(untested / reproduce.LOG_FILE, logs[untested])
    assert "train on CPU" not in tested and "features read from" in tested   # no training, no extraction
    assert (untested / "results.json").is_file() and (mine / "table.csv").is_file()


def test_gpu_groups_and_torchrun_in_the_plan(data, tmp_path, capsys):
    argv = ["--settings", "quickdraw/zeroshot", "--seeds", "0", "1", "2", "--data_root", str(data), "--runs",
            str(tmp_path / "runs"), "--gpus", "0,1,2,3,4", "--gpus_per_run", "2", "--dry_run",
            "--test_args", "--batch_size 7", "--", "--amp", "--mode", "1"]
    assert reproduce.main(argv) == 0
    plan = capsys.readouterr().out
    assert "on GPUs 0,1 | 2,3 (2 at a time, torchrun per training)" in plan
    train_lines = [line.strip() for line in plan.splitlines() if "train_quickdraw_ext.py" in line]
    assert len(train_lines) == 3
    assert all(t.startswith("torchrun --standalone --nproc_per_node=2 ") and "--amp" in t and "--mode" not in t
               for t in train_lines)
    test_lines = [line.strip() for line in plan.splitlines() if "test_quickdraw_ext_zeroshot.py" in line]
    assert all(t.startswith("python ") and "--amp --mode 1 --batch_size 7" in t for t in test_lines)
    args, _ = reproduce.parse(["--gpus", "2,3", "--gpus_per_run", "2"])
    executor = reproduce.Executor([], reproduce.device_groups(args), reproduce.Console())
    assert executor.env(["2", "3"])["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert executor.env(None)["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("argv, message", [
    (["--", "--seed", "3"], "use --seeds"),
    (["--", "--batch_size", "8"], "give it in --train_args or --test_args"),
    (["--train_args", "--savedir x"], "use --runs"),
    (["--", "--chanels_last"], "did you mean --channels_last?"),
    (["--gpus", "0", "--gpus_per_run", "2"], "needs at least that many GPUs"),
])
def test_flags_refused_in_one_sentence(data, tmp_path, argv, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?")):
        reproduce.main(["--data_root", str(data), "--runs", str(tmp_path), "--dry_run", *argv])
