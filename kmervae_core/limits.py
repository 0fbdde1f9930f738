"""What this job may use, not what the node has. Inside a container or a Slurm job with --mem,
/proc/meminfo and os.cpu_count() describe the whole node; the job's limits are in its cgroups
(v2: memory.max, memory.current, cpu.max; v1: memory.limit_in_bytes, memory.usage_in_bytes,
cpu.cfs_quota_us), found through /proc/self/cgroup and /proc/self/mountinfo. Every reader
takes `root` so that tests can hand it a tree of fake files. No torch here: ingest uses it.
"""
from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path

UNLIMITED_V1 = 2**62  # v1 reports "no limit" as the largest page-aligned 64-bit value


def gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Cgroup:
    """This process's cgroup directory for one controller (version 1 or 2) and the mount
    point above which its ancestors are not visible."""

    version: int
    path: Path
    mount: Path

    def levels(self) -> list[Path]:
        """This cgroup, then its ancestors up to the mount point: a limit anywhere above applies too."""
        out, p = [self.path], self.path
        while p != self.mount and self.mount in p.parents:
            p = p.parent
            out.append(p)
        return out


def find_cgroup(controller: str, root: Path = Path("/")) -> Cgroup | None:
    """The cgroup of `controller` ("memory" or "cpu") this process is in, v1 or v2; None where
    no such controller is mounted (no cgroups, or a controller not enabled)."""
    membership = read_text(root / "proc/self/cgroup")
    mounts = read_text(root / "proc/self/mountinfo")
    if membership is None or mounts is None:
        return None
    paths = {}
    for line in membership.splitlines():
        hier, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        for name in names.split(",") if hier != "0" else ["<v2>"]:
            paths[name] = path
    for line in mounts.splitlines():
        head, _, tail = line.partition(" - ")
        fields, fs = head.split(), tail.split()
        if len(fields) < 5 or len(fs) < 3:
            continue
        mount_root, mount_point = fields[3], root / fields[4].lstrip("/")
        if fs[0] == "cgroup2" and "<v2>" in paths:
            version, path = 2, paths["<v2>"]
        elif fs[0] == "cgroup" and controller in fs[2].split(",") and controller in paths:
            version, path = 1, paths[controller]
        else:
            continue
        rel = path[len(mount_root):] if path.startswith(mount_root) else path
        where = mount_point / rel.lstrip("/")
        probe = "memory.max" if controller == "memory" else "cpu.max"
        if version == 2 and not (where / probe).exists() and not (mount_point / probe).exists():
            continue  # a v2 hierarchy without this controller (e.g. hybrid mounts: v1 holds it)
        return Cgroup(version, where if where.is_dir() else mount_point, mount_point)
    return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def inactive_file(stat: Path) -> int:
    """Page cache the kernel reclaims before it runs out (counted in usage, not a real cost)."""
    values = {}
    for line in (read_text(stat) or "").splitlines():
        key, _, value = line.partition(" ")
        values[key] = value
    for key in ("total_inactive_file", "inactive_file"):
        if values.get(key, "").strip().isdigit():
            return int(values[key])
    return 0


def cgroup_memory_headroom(root: Path = Path("/")) -> tuple[int, str] | None:
    """(bytes, how) that this job's memory cgroups still allow: the smallest limit minus usage
    (less reclaimable page cache) over the cgroup and its ancestors; None where none is limited."""
    group = find_cgroup("memory", root)
    if group is None:
        return None
    limit_name, usage_name = (("memory.max", "memory.current") if group.version == 2
                              else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
    best: tuple[int, str] | None = None
    for level in group.levels():
        limit = read_int(level / limit_name)
        if limit is None or limit >= UNLIMITED_V1:
            continue
        used = max(0, (read_int(level / usage_name) or 0) - inactive_file(level / "memory.stat"))
        headroom = max(0, limit - used)
        if best is None or headroom < best[0]:
            best = (headroom, f"cgroup v{group.version} {limit_name} {gib(limit)} - {gib(used)} in use")
    return best


def mem_available(root: Path = Path("/")) -> int | None:
    """MemAvailable: what the node can give without swapping."""
    for line in (read_text(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def host_memory(root: Path = Path("/")) -> tuple[int, str]:
    """(bytes, how): the smaller of MemAvailable and what this job's memory cgroup allows."""
    available = mem_available(root)
    options = [] if available is None else [(available, f"MemAvailable {gib(available)}")]
    headroom = cgroup_memory_headroom(root)
    if headroom is not None:
        options.append(headroom)
    return min(options, default=(0, "no memory information"))


def cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs this job's cgroup quota allows (e.g. 2.5), None where unlimited."""
    group = find_cgroup("cpu", root)
    if group is None:
        return None
    quotas = []
    for level in group.levels():
        if group.version == 2:
            quota, _, period = (read_text(level / "cpu.max") or "max").strip().partition(" ")
            if quota != "max" and period:
                quotas.append(int(quota) / int(period))
        else:
            quota, period = read_int(level / "cpu.cfs_quota_us"), read_int(level / "cpu.cfs_period_us")
            if quota is not None and quota > 0 and period:
                quotas.append(quota / period)
    return min(quotas, default=None)


def usable_cpus(root: Path = Path("/")) -> int:
    """CPUs this process may run on (affinity) and its cgroup quota pays for, at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(root)
    return max(1, min(affinity, math.ceil(quota) if quota is not None else affinity))


def ranks_per_host() -> int:
    """Ranks sharing this host (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def auto_workers(root: Path = Path("/")) -> int:
    """Reader threads per rank for `--workers auto`: the CPUs this job may use (usable_cpus)
    shared by the ranks on this host, less one for the rank's own loop, at least 1."""
    return max(1, usable_cpus(root) // max(1, ranks_per_host()) - 1)


LARGE_BLOCK = 16 * 2**20  # freed blocks this large go back to the system (return_large_blocks)


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Have glibc's malloc hand every block of `threshold` bytes or more back to the system when
    it is freed (mallopt M_MMAP_THRESHOLD); False where the C library has no mallopt. By default
    that threshold rises with each large block freed, up to 32 MiB, and freed blocks below it stay
    in the heaps of the threads that made them: a training rank whose reader threads, gathers and
    latent metrics allocate 10-30 MiB buffers then holds about 100 MiB it no longer uses
    (docs/memory.md). It is the process's setting, so the command line calls it, not the library."""
    try:
        return bool(ctypes.CDLL(None).mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
