"""slurm/train_multinode.sbatch run for real: a one-machine SLURM cluster (munged, slurmctld, slurmd of Debian's
slurm-wlm), the repository's sbatch script submitted unchanged (only the variables it documents set), the smoke
configuration on CPU with gloo, two processes on the node. The run must finish, equal the same run under a plain
torchrun bit for bit, and each training process must have had the CPUs the job gave its task."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import make_tree
from tests.slurm_cluster import missing, slurm_cluster
from utils.checkpoint import load_checkpoint
from utils.run_files import LAST_CHECKPOINT_FILE

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
SMOKE = ["--smoke", "--device", "cpu", "--no_figures", "--img_size", "32", "--max_steps_per_epoch", "3",
         "--max_val_images", "6"]

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def job_environment() -> dict[str, str]:
    """The submitting shell: the project's environment first on PATH (the job inherits it, as on a cluster)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("OMP_NUM_THREADS", None)               # the script's own default (1 per process) applies
    return env


def test_sbatch_script_runs_for_real_and_equals_plain_torchrun(tmp_path):
    data = tmp_path / "data"
    make_tree(data, "sketchy", sketches=8, photos=8)
    cpus = os.cpu_count() or 1
    with slurm_cluster(tmp_path / "slurm") as cluster:
        job = cluster.submit(
            ["--nodes=1", f"--cpus-per-task={cpus}", f"--output={tmp_path}/slurm-%j.out",
             "--export=ALL,NPROC_PER_NODE=2,RDZV_HOST=127.0.0.1,GLOO_SOCKET_IFNAME=lo",
             "slurm/train_multinode.sbatch", "train_sketchy_ext.py", "--data_root", str(data), *SMOKE,
             "--savedir", str(tmp_path / "slurm_run")],
            cwd=ROOT, env=job_environment())
        state = cluster.wait_job(job, TIMEOUT_S)
        output = (tmp_path / f"slurm-{job}.out").read_text(errors="replace")
        assert state == "COMPLETED", f"job {job}: {state}\n{output[-3000:]}\n{cluster.logs()}"

    assert "done:" in output and "over 2 process(es)" in output
    port = 20000 + int(job) % 20000
    assert f"rendezvous 127.0.0.1:{port}" in output               # the port follows the job id
    seen = dict(re.findall(r"^process (\d) of 2: (\d+) CPU\(s\)", output, re.MULTILINE))
    assert seen == {"0": str(cpus), "1": str(cpus)}, output[-3000:]   # both got the task's CPUs, not one

    plain = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_sketchy_ext.py",
         "--data_root", str(data), *SMOKE, "--savedir", str(tmp_path / "plain_run")],
        cwd=ROOT, env=dict(job_environment(), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo"),
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert plain.returncode == 0, plain.stderr[-3000:]
    a = load_checkpoint(tmp_path / "slurm_run" / LAST_CHECKPOINT_FILE)
    b = load_checkpoint(tmp_path / "plain_run" / LAST_CHECKPOINT_FILE)
    assert a["epoch"] == b["epoch"] == 2 and a["best_acc1"] == b["best_acc1"]
    for part in ("state_dict", "teacher_head"):
        assert a[part].keys() == b[part].keys()
        assert all(a[part][k].equal(b[part][k]) for k in a[part]), part
