"""How many CPU cores this process may use, and how the training loaders share them (standard library only).

``os.cpu_count()`` counts every core of the machine. A process started by a scheduler (SLURM's task binding, a
container's cpuset, ``taskset``) may run on far fewer: its affinity mask says which, and a cgroup CPU quota
(``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) may cap it further. Loader
workers counted from ``os.cpu_count()`` on a 128-core node with 32 CPUs for 4 GPUs fight the processes that
launch the CUDA kernels for those 32 cores.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_WORKERS_PER_PROCESS = 16     # beyond this, workers cost memory (each holds a Python with torch) for little


def affinity_cores() -> int:
    """Cores of this process's affinity mask (every core where the platform has no masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def affinity_text() -> str:
    """This process's CPUs in one phrase, ranges folded: ``2 CPU(s) (0-1)``, ``3 CPU(s) (0, 4-5)``."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return f"{os.cpu_count() or 1} CPU(s) (no affinity mask on this platform)"
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    folded = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return f"{len(cpus)} CPU(s) ({folded})"


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota_cores(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> Optional[float]:
    """The CPU quota of this process's cgroup in cores (e.g. 2.5), or None when there is none or it is unreadable.

    cgroup v2: ``<root>/<path>/cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``. cgroup v1: the
    ``cpu`` controller's ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``. The path of this process's
    cgroup comes from ``/proc/self/cgroup``; where a container shows its own cgroup as the root, the files at
    ``root`` itself are read.
    """
    text = _read(proc_cgroup)
    if text is None:
        return None
    quotas = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":                                     # v2 unified hierarchy
            for base in (root / rel, root):
                value = _read(base / "cpu.max")
                if value is not None:
                    quota, _, period = value.partition(" ")
                    if quota != "max" and period:
                        quotas.append(int(quota) / int(period))
                    break
        elif "cpu" in controllers.split(","):                     # v1 cpu controller
            for base in (root / controllers / rel, root / controllers, root / "cpu" / rel, root / "cpu"):
                quota, period = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
                if quota is not None and period is not None:
                    if int(quota) > 0 and int(period) > 0:
                        quotas.append(int(quota) / int(period))
                    break
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by its cgroup's CPU quota (rounded down,
    at least 1)."""
    cores = affinity_cores()
    quota = cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


@dataclass(frozen=True)
class LoaderWorkers:
    """Loader workers of one training process: for the sketch and the photo loader (validation uses both)."""
    sketches: int
    photos: int
    cores: int                  # usable cores of the machine's processes together (0: the user chose)
    processes: int

    @property
    def total(self) -> int:
        return self.sketches + self.photos

    def describe(self, chosen: bool) -> str:
        how = ("--workers" if chosen else
               f"{self.cores} usable core(s) shared by {self.processes} process(es) on this machine, one kept "
               f"for each main process")
        return (f"loaders: {self.sketches} + {self.photos} workers per process (sketches + photos, in proportion "
                f"to their share of the batch; {how})")


def split_workers(total: int, n_sketch: int, n_photo: int) -> tuple[int, int]:
    """``total`` workers split between the sketch and photo loaders in proportion to their images per step
    (70 : 140 -> 1 : 2). With two or more, each loader keeps at least one; a single one goes to the photos (the
    larger share; sketches then load in the main process)."""
    if total <= 0:
        return 0, 0
    if total == 1 or n_sketch <= 0:
        return 0, total
    if n_photo <= 0:
        return total, 0
    sketches = round(total * n_sketch / (n_sketch + n_photo))
    sketches = min(max(sketches, 1), total - 1)
    return sketches, total - sketches


def loader_workers(n_sketch: int, n_photo: int, local_processes: int, requested: Optional[int] = None,
                   cores: Optional[int] = None, cap: int = MAX_WORKERS_PER_PROCESS) -> LoaderWorkers:
    """The training loaders' workers per process.

    ``requested`` (``--workers``): that many per process, split by :func:`split_workers`. Otherwise: the usable
    cores (:func:`usable_cores`, or ``cores``) divided by the processes of this machine, one of each share kept
    for the process itself (it runs the step and feeds the device), at most ``cap``, then split.
    """
    processes = max(1, local_processes)
    if requested is not None:
        return LoaderWorkers(*split_workers(requested, n_sketch, n_photo), cores=0, processes=processes)
    cores = usable_cores() if cores is None else cores
    per_process = min(cap, max(0, cores // processes - 1))
    return LoaderWorkers(*split_workers(per_process, n_sketch, n_photo), cores=cores, processes=processes)
