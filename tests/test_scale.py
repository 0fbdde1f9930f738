"""benchmarks/scale.sh, the run larger than memory (issue 33): at a tiny size it goes end to end
and reports every step; it refuses a disk too small for the run in one line before writing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.scale import required_bytes, tile
from tests.conftest import ROOT, child_env, random_kmers

STEPS = ["make-npy", "ingest", "verify", "train-1-epoch", "encode"]


def scale(*args: str, max_file_kib: int = 0, **env: str) -> subprocess.CompletedProcess:
    """Run scale.sh; `max_file_kib` caps every file it writes (a run that should have been refused
    dies at that size instead of filling the disk)."""
    limit = f"ulimit -f {max_file_kib}; " if max_file_kib else ""
    return subprocess.run(["bash", "-c", limit + 'exec bash "$0" "$@"', str(ROOT / "benchmarks" / "scale.sh"), *args],
                          capture_output=True, text=True, env=child_env(PY=sys.executable, DROP_CACHES="0", **env),
                          timeout=300)


@pytest.mark.slow
def test_a_tiny_run_times_every_step_then_removes_the_big_files_and_keeps_the_figures(tmp_path):
    work = tmp_path / "scale"
    proc = scale("500", SCALE_DIR=str(work), SAMPLE_ROWS="200", HIDDEN="8", LATENT="2", BATCH="100")
    assert proc.returncode == 0, proc.stderr
    records = {r["step"]: r for r in map(json.loads, (work / "figures.jsonl").read_text().splitlines())}
    assert list(records) == STEPS
    assert all(r["wall_s"] > 0 and r["peak_rss_mib"] > 0 for r in records.values())
    # the input: 500 rows of float32 x 10,965 columns and a 128-byte header
    assert records["ingest"]["input_bytes"] == 128 + 500 * 10965 * 4
    # the space check asked for at least the sample, the npy and the store
    assert sum(records[s]["input_bytes"] for s in ("make-npy", "ingest", "verify")) <= required_bytes(500, 200)
    # the printed table has a line per step
    assert [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")][1:] == STEPS
    assert sorted(p.name for p in work.iterdir()) == sorted(["figures.jsonl", "table.md", *(f"{s}.log" for s in STEPS)])


def test_the_big_input_is_the_sample_repeated_row_by_row(tmp_path):
    sample = random_kmers(3)
    np.save(tmp_path / "sample.npy", sample)
    tile(str(tmp_path / "sample.npy"), str(tmp_path / "big.npy"), 7)
    np.testing.assert_array_equal(np.load(tmp_path / "big.npy"), np.concatenate([sample, sample, sample[:1]]))


def test_a_disk_too_small_is_refused_in_one_line_before_anything_is_written(tmp_path):
    work = tmp_path / "scale"
    proc = scale(str(10**12), max_file_kib=1024, SCALE_DIR=str(work))  # 44 PB of npy: no disk here holds it
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("scale.sh: error: ")
    assert "GB free" in proc.stderr and "need" in proc.stderr
    assert not work.exists()


@pytest.mark.parametrize("rows", ["0", "1e6", "-5"])
def test_rows_that_are_not_a_positive_whole_number_are_refused_in_one_line(tmp_path, rows):
    proc = scale(rows, max_file_kib=1024, SCALE_DIR=str(tmp_path / "scale"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("scale.sh: error: ")
    assert not (tmp_path / "scale").exists()


def test_a_folder_of_the_users_own_files_is_refused_and_kept_whole(tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "kmers.zarr").mkdir()  # a store of the user's, named as scale.sh names its own
    (work / "kmers.zarr" / "zarr.json").write_text("{}")
    proc = scale("500", max_file_kib=1024, SCALE_DIR=str(work), SAMPLE_ROWS="200")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not an earlier scale.sh run's" in proc.stderr
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == ["kmers.zarr", "kmers.zarr/zarr.json"]
