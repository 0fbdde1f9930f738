"""Memory and CPU budgets come from what the job may use: its cgroup (v1 or v2) as well as
MemAvailable and the CPU affinity. Parsing is tested on trees of files laid out as the kernel
lays them out; one training run is made inside a real memory-limited cgroup where this machine
lets us create one."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kmervae_core.limits import cgroup_memory_headroom, cpu_quota, find_cgroup, host_memory, usable_cpus
from tests.conftest import ROOT, child_env, random_kmers, run

GiB = 2**30
MiB = 2**20


def fake_tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str], meminfo_kib: int = 64 * 2**20) -> Path:
    """/proc/self/{cgroup,mountinfo}, /proc/meminfo and cgroup files under root."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "proc/meminfo").write_text(f"MemTotal: {2 * meminfo_kib} kB\nMemAvailable: {meminfo_kib} kB\n")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
             "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
             "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")


def test_v2_takes_the_tightest_limit_of_the_cgroup_and_its_parents_less_reclaimable_cache(tmp_path):
    job = "sys/fs/cgroup/slurm/job_7/step_0"
    root = fake_tree(tmp_path, "0::/slurm/job_7/step_0\n", V2_MOUNT, {
        f"{job}/memory.max": "max\n", f"{job}/memory.current": str(1 * GiB),
        f"{job}/memory.stat": f"anon {GiB}\ninactive_file {256 * MiB}\n",
        "sys/fs/cgroup/slurm/job_7/memory.max": str(4 * GiB), "sys/fs/cgroup/slurm/job_7/memory.current": str(3 * GiB),
        "sys/fs/cgroup/slurm/job_7/memory.stat": f"inactive_file {GiB}\n",
        "sys/fs/cgroup/slurm/memory.max": str(64 * GiB), "sys/fs/cgroup/slurm/memory.current": str(10 * GiB)})
    assert find_cgroup("memory", root).version == 2
    headroom, how = cgroup_memory_headroom(root)
    assert headroom == 4 * GiB - (3 * GiB - GiB)  # the job's limit, its page cache not counted as used
    assert how == "cgroup v2 memory.max 4.00 GiB - 2.00 GiB in use"
    assert host_memory(root) == (2 * GiB, how)  # below MemAvailable (64 GiB)


V1_JOB = "sys/fs/cgroup/memory/docker/abc"


def v1_files(limit: str) -> dict[str, str]:
    """A docker cgroup v1 memory hierarchy whose job cgroup has `limit` and its parents none."""
    return {f"{V1_JOB}/memory.limit_in_bytes": limit, f"{V1_JOB}/memory.usage_in_bytes": str(400 * MiB),
            f"{V1_JOB}/memory.stat": f"cache {200 * MiB}\ninactive_file 1\ntotal_inactive_file {100 * MiB}\n",
            "sys/fs/cgroup/memory/docker/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}


def test_v1_reads_limit_in_bytes_less_reclaimable_cache(tmp_path):
    root = fake_tree(tmp_path, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n", V1_MOUNTS,
                     v1_files(str(int(1.4 * GiB))))
    group = find_cgroup("memory", root)
    assert group.version == 1 and group.path == root / V1_JOB
    headroom, how = cgroup_memory_headroom(root)
    assert headroom == int(1.4 * GiB) - 300 * MiB and how.startswith("cgroup v1 memory.limit_in_bytes 1.40 GiB")


def test_v1_treats_the_huge_default_limit_as_no_limit(tmp_path):
    unlimited = fake_tree(tmp_path, "4:memory:/docker/abc\n0::/\n", V1_MOUNTS, v1_files("9223372036854771712\n"),
                          meminfo_kib=8 * 2**20)
    assert cgroup_memory_headroom(unlimited) is None
    assert host_memory(unlimited) == (8 * GiB, "MemAvailable 8.00 GiB")


def test_a_namespaced_cgroup_is_found_at_the_mount_root(tmp_path):
    """Inside a container the process sees itself at / and the mount is rooted at its cgroup."""
    root = fake_tree(tmp_path, "0::/\n", "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                     {"sys/fs/cgroup/memory.max": str(2 * GiB), "sys/fs/cgroup/memory.current": str(GiB),
                      "sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert cgroup_memory_headroom(root)[0] == GiB
    assert cpu_quota(root) == 1.5


def test_a_hybrid_host_keeps_memory_in_v1(tmp_path):
    root = fake_tree(tmp_path, "4:memory:/\n0::/\n", V1_MOUNTS,
                     {"sys/fs/cgroup/memory/memory.limit_in_bytes": str(3 * GiB),
                      "sys/fs/cgroup/memory/memory.usage_in_bytes": str(GiB)})
    assert find_cgroup("memory", root).version == 1 and cgroup_memory_headroom(root)[0] == 2 * GiB


def test_a_missing_hierarchy_is_no_limit(tmp_path):
    bare = fake_tree(tmp_path, "", "", {})
    assert find_cgroup("memory", bare) is None and cgroup_memory_headroom(bare) is None and cpu_quota(bare) is None


def test_cpu_quota_v1_is_the_job_cgroups_quota_over_its_period(tmp_path):
    v1 = fake_tree(tmp_path, "2:cpu,cpuacct:/job\n", V1_MOUNTS,
                   {"sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "250000\n",
                    "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
                    "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n"})
    assert cpu_quota(v1) == 2.5


def unlimited_v2(root: Path) -> Path:
    return fake_tree(root, "0::/job\n", V2_MOUNT, {"sys/fs/cgroup/job/cpu.max": "max 100000\n",
                                                  "sys/fs/cgroup/job/memory.max": "max\n"})


def test_cpu_quota_v2_max_is_no_quota(tmp_path):
    assert cpu_quota(unlimited_v2(tmp_path)) is None


def test_usable_cpus_are_the_affinity_without_a_quota(tmp_path):
    assert usable_cpus(unlimited_v2(tmp_path)) == len(os.sched_getaffinity(0))


def test_half_a_cpu_of_quota_still_gets_one_thread(tmp_path):
    one = fake_tree(tmp_path, "0::/job\n", V2_MOUNT, {"sys/fs/cgroup/job/cpu.max": "50000 100000\n"})
    assert usable_cpus(one) == 1


def test_ingest_workers_default_to_the_usable_cpus():
    help_text = run("ingest", "--help", check=True).stdout
    assert f"(default: {usable_cpus()})" in " ".join(help_text.split())


# ---- a real memory-limited cgroup ----

def child_memory_cgroup(name: str, limit: int) -> tuple[Path, str] | None:
    """A new child of this process's memory cgroup limited to `limit` bytes (v1 or v2), or None
    where none can be made here."""
    group = find_cgroup("memory")
    if group is None:
        return None
    child = group.path / name
    try:
        child.mkdir(exist_ok=True)
        limit_file = "memory.limit_in_bytes" if group.version == 1 else "memory.max"
        (child / limit_file).write_text(str(limit))
    except OSError:
        return None
    return child, limit_file


def remove_cgroup(path: Path) -> None:
    for _ in range(100):  # the last exiting processes leave it a moment after the trainer ends
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def store_20k(tmp_path_factory) -> Path:
    """20,000 rows (220 MB of float32 CLR): a host-tier cache of a few hundred MB."""
    d = tmp_path_factory.mktemp("limit")
    template = random_kmers(1000, seed=7)
    with open(d / "x.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (20000, 10965)})
        for _ in range(20):
            f.write(template.tobytes())
    run("ingest", d / "x.npy", d / "x.zarr", check=True)
    (d / "x.npy").unlink()
    return d / "x.zarr"


@pytest.mark.slow
@pytest.mark.parametrize("limit_gib,tier", [(1.2, "host")])  # 1.2 GiB: with loader workers (before the in-rank feed) no cache fitted beside them
def test_cache_auto_fits_the_cgroup_limit_and_the_run_finishes_inside_it(store_20k, tmp_path, limit_gib, tier):
    made = child_memory_cgroup(f"kmervae-test-{os.getpid()}", int(limit_gib * GiB))
    if made is None:
        pytest.skip("no writable cgroup v1 or v2 memory controller on this machine (needs root and a delegated hierarchy)")
    cgroup, limit_file = made
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "train", "--data", str(store_20k), "--out", str(tmp_path / "run"), "--epochs", "2",
             "--workers", "1", "--hidden", "64,32", "--latent", "8", "--latent-sample", "0", "--metrics-port", "0"],
            cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
            preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))
    finally:
        remove_cgroup(cgroup)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("cache:"))
    assert line.startswith(f"cache: {tier}") and f"{limit_file} {limit_gib:.2f} GiB" in line, line
    assert "for the stream's slabs" in line and "Epoch 2/2" in proc.stdout


FREED_BLOCK_PROBE = """
import ctypes, sys, numpy as np
from kmervae_core.limits import return_large_blocks
if sys.argv[1] == "set":
    assert return_large_blocks()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
a = np.ones(28 * 2**20 // 8); del a  # glibc's default: its threshold rises to this block's size (< 32 MiB)
b = np.ones(20 * 2**20 // 8)  # ... so a smaller one comes from a heap that keeps it once freed
print(libc.mallinfo2().hblkhd / 2**20)  # MiB in blocks of their own, which free() gives back to the system
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33's malloc")
def test_a_large_buffer_is_a_block_of_its_own_that_freeing_gives_back_once_the_process_asks():
    # glibc's defaults: any MALLOC_*_ variable turns its rising threshold off (dask.distributed's LocalCluster,
    # run by another test in this process, sets MALLOC_TRIM_THRESHOLD_ here for its workers)
    env = {k: v for k, v in child_env().items() if not k.startswith("MALLOC_")}
    own = {mode: float(subprocess.run([sys.executable, "-c", FREED_BLOCK_PROBE, mode], cwd=ROOT, env=env,
                                      capture_output=True, text=True, check=True).stdout)
           for mode in ("default", "set")}
    assert own["default"] < 10  # MiB (other small blocks): glibc's default put it in a heap, which keeps it
    assert own["set"] >= 20  # its 20 MiB are a block of their own (above the 16 MiB threshold)
