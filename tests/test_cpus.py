"""Loader workers from the cores a process may use (affinity, cgroup quota), split between the sketch and photo
loaders as the batch is, and the trainer saying its choice once."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.cpus import cgroup_quota_cores, loader_workers, split_workers

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("total,n_sketch,n_photo,expected", [
    (9, 70, 140, (3, 6)),           # Sketchy 1 : 2
    (8, 70, 140, (3, 5)),
    (10, 21, 189, (1, 9)),          # TU-Berlin 1 : 9
    (2, 21, 189, (1, 1)),           # two or more: each loader keeps one
    (1, 70, 140, (0, 1)),           # one: the photos' (the larger share)
    (0, 70, 140, (0, 0)),
    (5, 0, 12, (0, 5)),
])
def test_workers_split_as_the_batch(total, n_sketch, n_photo, expected):
    assert split_workers(total, n_sketch, n_photo) == expected
    assert sum(split_workers(total, n_sketch, n_photo)) == total


def test_workers_per_process_from_the_usable_cores():
    # the node: 32 usable cores for 4 GPUs -> 8 each, one kept for the main process -> 7 workers
    assert loader_workers(70, 140, 4, cores=32).total == 7
    assert (loader_workers(70, 140, 4, cores=40).sketches, loader_workers(70, 140, 4, cores=40).photos) == (3, 6)
    assert loader_workers(70, 140, 1, cores=128).total == 16          # capped per process
    assert loader_workers(70, 140, 2, cores=2).total == 0              # a core each: the main processes load
    assert loader_workers(70, 140, 8, cores=4).total == 0
    chosen = loader_workers(70, 140, 4, requested=6, cores=2)          # --workers: that many, split the same way
    assert (chosen.sketches, chosen.photos) == (2, 4)
    line = loader_workers(70, 140, 4, cores=40).describe(chosen=False)
    assert line.startswith("loaders: 3 + 6 workers per process") and "40 usable core(s)" in line


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> float | None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text + "\n")
    return cgroup_quota_cores(proc, tmp_path / "fs")


def test_cgroup_quotas_v1_and_v2(tmp_path):
    assert _cgroup(tmp_path / "a", "0::/job/7", {"job/7/cpu.max": "250000 100000"}) == 2.5
    assert _cgroup(tmp_path / "b", "0::/job/7", {"job/7/cpu.max": "max 100000"}) is None
    assert _cgroup(tmp_path / "c", "0::/", {"cpu.max": "100000 100000"}) == 1.0      # a container's own root
    assert _cgroup(tmp_path / "d", "4:cpu,cpuacct:/slurm/uid_0/job_3",
                   {"cpu,cpuacct/slurm/uid_0/job_3/cpu.cfs_quota_us": "400000",
                    "cpu,cpuacct/slurm/uid_0/job_3/cpu.cfs_period_us": "100000"}) == 4.0
    assert _cgroup(tmp_path / "e", "1:cpu:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}) is None
    assert cgroup_quota_cores(tmp_path / "missing", tmp_path) is None


def _restricted(code: str) -> str:
    """Run ``code`` in a child process allowed on CPU 0 only (taskset, as a scheduler's binding does)."""
    prefix = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    out = subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, preexec_fn=None if prefix else _cpu0)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _cpu0() -> None:
    import os
    os.sched_setaffinity(0, {0})


def test_restricted_affinity_counts_its_own_cores_not_the_machines():
    out = _restricted("import os; from utils.cpus import usable_cores, loader_workers; "
                      "w = loader_workers(70, 140, 1); print(os.cpu_count(), usable_cores(), w.sketches, w.photos)")
    cpu_count, usable, sketches, photos = map(int, out.split())
    assert usable == 1 and (sketches, photos) == (0, 0)
    assert cpu_count >= usable


def test_the_trainer_says_its_choice_once_and_its_cpus(tree, tmp_path):
    prefix = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    out = subprocess.run(
        [*prefix, sys.executable, "train_sketchy_ext.py", "--data_root", str(tree), "--model", "convnextv2_atto",
         "--pretrained", "none", "--img_size", "32", "--batch_size", "12", "--epochs", "1", "--warmup_epochs", "0",
         "--max_steps_per_epoch", "1", "--max_val_images", "3", "--device", "cpu", "--no_figures",
         "--savedir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=None if prefix else _cpu0)
    assert out.returncode == 0, out.stderr[-2000:]
    loaders = [line for line in out.stdout.splitlines() if line.startswith("loaders:")]
    assert loaders == ["loaders: 0 + 0 workers per process (sketches + photos, in proportion to their share of the "
                       "batch; 1 usable core(s) shared by 1 process(es) on this machine, one kept for each main "
                       "process)"]
    assert "process 0 of 1: 1 CPU(s) (0), device cpu" in out.stdout.splitlines()
