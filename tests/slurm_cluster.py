"""A one-machine SLURM cluster for tests: munged, slurmctld and slurmd of Debian's slurm-wlm, on 127.0.0.1, with
every file (key, config, state, spool, logs) in a temporary folder, and every daemon stopped at the end.

The node is this machine with its CPUs, bound per task to cores (``TaskPluginParam=Cores``, a usual site
setting, under which a job step gets only the CPUs srun asks for), and four "GPUs" that are plain files: the
sbatch script's ``--gpus-per-node`` is accepted and ``SLURM_GPUS_ON_NODE`` is set as on a GPU cluster.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
NODE = "sbkanode"
GPUS = 4


def missing() -> Optional[str]:
    """Why a cluster cannot start here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} not found): apt-get install slurm-wlm munge "
                f"(.ci/run does)")
    if os.geteuid() != 0:
        return "slurmd launches job steps as their user and needs root here"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.procs: list[subprocess.Popen] = []

    def write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "run", "gpu"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for i in range(GPUS):
            (r / "gpu" / f"gpu{i}").touch()
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        first_job = 1000 + int.from_bytes(os.urandom(2), "little") % 8000   # varies the job-id-derived port
        self.conf.write_text(f"""\
ClusterName=sbkatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/run/munge.sock
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Cores
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
FirstJobId={first_job}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory=1000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={r}/gpu/gpu[0-{GPUS - 1}]\n")

    def daemon(self, *argv: str) -> None:
        log = open(self.root / "log" / f"{Path(argv[0]).name}.out", "w")
        self.procs.append(subprocess.Popen(list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def scontrol(self, *args: str) -> str:
        return subprocess.run([_binary("scontrol"), *args], env=self.env, capture_output=True, text=True,
                              timeout=30).stdout

    def wait_node_idle(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.scontrol("show", "node", NODE, "-o")
            if "State=IDLE" in state:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test node did not come up: {state.strip()}\n{self.logs()}")

    def start(self) -> None:
        self.write_config()
        r = self.root
        self.daemon(_binary("munged"), "-F", "-f", f"--socket={r}/run/munge.sock", f"--key-file={r}/munge.key",
                    f"--pid-file={r}/run/munged.pid", f"--log-file={r}/log/munged.log",
                    f"--seed-file={r}/run/munged.seed")
        deadline = time.monotonic() + 20
        while not (r / "run" / "munge.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.logs()}")
            time.sleep(0.1)
        self.daemon(_binary("slurmctld"), "-D", "-i")
        time.sleep(1.0)
        self.daemon(_binary("slurmd"), "-D", "-N", NODE)
        self.wait_node_idle()

    def submit(self, argv: list[str], cwd: Path, env: dict[str, str]) -> str:
        out = subprocess.run([_binary("sbatch"), "--parsable", *argv], cwd=cwd, env={**env, "SLURM_CONF": str(self.conf)},
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def wait_job(self, job: str, timeout_s: float) -> str:
        """The job's final state (COMPLETED, FAILED, ...); cancels it when it runs past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.scontrol("show", "job", job, "-o")
            state = next((f.split("=", 1)[1] for f in info.split() if f.startswith("JobState=")), "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            time.sleep(1.0)
        subprocess.run([_binary("scancel"), job], env=self.env, timeout=30)
        raise AssertionError(f"job {job} still running after {timeout_s:.0f} s\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@contextmanager
def slurm_cluster(root: Path) -> Iterator[Cluster]:
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
