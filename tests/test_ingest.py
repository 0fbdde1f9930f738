"""`python -m ingest`: the store it writes, the inputs it refuses, and how it resumes."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import ROOT, random_kmers, reference_clr, run, store_attrs, write_npy


def read_store(path: Path) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return g["clr"][:], g["column0"][:]


@pytest.fixture(scope="module")
def ingested(sample, tmp_path_factory) -> tuple[Path, str]:
    """The sample ingested in 64-row chunks by 2 workers (read-only): the store and the output."""
    out = tmp_path_factory.mktemp("ingested") / "s.zarr"
    return out, run("ingest", sample[0], out, "--chunk-rows", 64, "--workers", 2, check=True).stdout


def test_ingest_reports_the_rows_and_the_compression(ingested):
    _, stdout = ingested
    assert "300 rows" in stdout and "compression" in stdout


def test_round_trip_matches_reference(sample, ingested):
    source = np.load(sample[0])
    clr, col0 = read_store(ingested[0])
    assert clr.shape == (300, 2772) and clr.dtype == np.float32
    np.testing.assert_allclose(clr, reference_clr(source, "global"), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(col0, source[:, 0])


def test_the_store_records_how_it_was_made_and_that_it_is_complete(ingested):
    attrs = store_attrs(ingested[0])
    assert attrs["complete"] is True and attrs["rows"] == 300 and attrs["chunk_rows"] == 64
    assert attrs["transform"]["scope"] == "global" and attrs["codec"] == "zstd:1"
    assert attrs["kmer_groups"]["6"] == [0, 2080] and attrs["source"]["shape"] == [300, 10965]


def test_chunks_hold_whole_rows_and_no_resume_markers_are_left(ingested):
    g = zarr.open_group(str(ingested[0]), mode="r")
    assert g["clr"].chunks == (64, 2772) and "_ingest_done" not in g


@pytest.mark.parametrize("dtype,fortran", [(">f8", False), ("<f8", True), ("<f4", True)])
def test_float64_big_endian_and_fortran_inputs(tmp_path, dtype, fortran):
    x = random_kmers(150, seed=5).astype(np.float64).astype(dtype)
    npy = write_npy(tmp_path / "x.npy", x, fortran=fortran)
    out = tmp_path / "x.zarr"
    run("ingest", npy, out, "--chunk-rows", 40, "--clr", "per-k", check=True)
    clr, col0 = read_store(out)
    np.testing.assert_allclose(clr, reference_clr(x, "per_k"), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(col0, x[:, 0])
    assert col0.dtype == np.dtype(dtype).newbyteorder("=")


@pytest.mark.parametrize("codec", ["lz4", "none", "gzip:3", "blosc-zstd"])
def test_other_codecs_hold_the_same_values(sample, tmp_path, codec):
    npy, _ = sample
    run("ingest", npy, tmp_path / "z.zarr", "--chunk-rows", 100, check=True)
    run("ingest", npy, tmp_path / "o.zarr", "--chunk-rows", 100, "--codec", codec, check=True)
    np.testing.assert_array_equal(read_store(tmp_path / "z.zarr")[0], read_store(tmp_path / "o.zarr")[0])
    assert store_attrs(tmp_path / "o.zarr")["codec"].split(":")[0] == codec.split(":")[0]


def test_float16_store_is_close_to_the_reference(sample, tmp_path):
    npy, _ = sample
    out = tmp_path / "h.zarr"
    run("ingest", npy, out, "--dtype", "float16", check=True)
    clr, _ = read_store(out)
    assert clr.dtype == np.float16 and store_attrs(out)["dtype"] == "float16"
    ref = reference_clr(np.load(npy), "global")
    assert np.abs(clr.astype(np.float64) - ref).max() < 2e-2


# ---- bad input: one line on stderr, exit 2, no traceback, no store marked complete ----

def _npy_with_header(path: Path, descr: str, shape: tuple, payload: bytes) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(payload)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = random_kmers(20, seed=6)
    full = write_npy(tmp / "good.npy", good)
    raw = full.read_bytes()
    cases = {
        "missing": (tmp / "absent.npy", "no such file"),
        "directory": (tmp, "is a directory"),
        "not npy": (tmp / "notes.txt", "not a .npy file"),
        "truncated": (tmp / "trunc.npy", "truncated"),
        "padded": (tmp / "pad.npy", "padded"),
        "1-D": (write_npy(tmp / "flat.npy", good.ravel()), "2-D"),
        "3-D": (write_npy(tmp / "cube.npy", good.reshape(20, 1, 10965)), "2-D"),
        "columns": (write_npy(tmp / "cols.npy", good[:, :-1]), "10965 columns"),
        "zero rows": (write_npy(tmp / "empty.npy", good[:0]), "zero rows"),
        "object": (_npy_with_header(tmp / "obj.npy", "|O", (20, 10965), b"\x80\x04evil"), "dtype object"),
        "complex": (write_npy(tmp / "cplx.npy", good.astype(np.complex64)), "dtype complex64"),
        "string": (write_npy(tmp / "str.npy", np.full((2, 10965), "a")), "dtype <U1"),
        "int": (write_npy(tmp / "int.npy", good.astype(np.int32)), "dtype int32"),
    }
    (tmp / "notes.txt").write_text("contig,length\n")
    (tmp / "trunc.npy").write_bytes(raw[:-100])
    (tmp / "pad.npy").write_bytes(raw + b"\0" * 8)
    for name, row, value in [("nan", 7, np.nan), ("inf", 3, np.inf), ("negative", 11, -0.25)]:
        bad = good.copy()
        bad[row, 9000] = value
        bad[row + 5, 10964] = value  # a later bad row must not be the one named
        cases[name] = (write_npy(tmp / f"{name}.npy", bad), f"row {row} holds a NaN, infinite or negative")
    return cases


BAD = ["missing", "directory", "not npy", "truncated", "padded", "1-D", "3-D", "columns", "zero rows",
       "object", "complex", "string", "int", "nan", "inf", "negative"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.zarr"
    proc = run("ingest", path, out, "--chunk-rows", 4)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0]
    assert not (out / "zarr.json").exists() or store_attrs(out)["complete"] is False


@pytest.fixture(scope="module")
def dropped(tmp_path_factory) -> tuple[np.ndarray, Path, str]:
    """30 rows, 4 and 17 with a NaN and 22 with a negative value, ingested with
    --on-bad-rows drop (read-only): the input, the store and the output."""
    d = tmp_path_factory.mktemp("dropped")
    x = random_kmers(30, seed=8)
    x[[4, 17], 9999] = np.nan
    x[22, 8200] = -1.0
    npy = write_npy(d / "x.npy", x)
    proc = run("ingest", npy, d / "x.zarr", "--chunk-rows", 8, "--on-bad-rows", "drop", check=True)
    return x, d / "x.zarr", proc.stdout


def test_dropped_bad_rows_are_said_and_recorded(dropped):
    _, out, stdout = dropped
    assert "dropping 3 rows" in stdout
    attrs = store_attrs(out)
    assert attrs["dropped_rows"] == [4, 17, 22] and attrs["rows"] == 27 and attrs["complete"] is True


def test_a_store_without_its_bad_rows_holds_the_others_in_order(dropped):
    x, out, _ = dropped
    keep = np.setdiff1d(np.arange(30), [4, 17, 22])
    clr, col0 = read_store(out)
    np.testing.assert_allclose(clr, reference_clr(x[keep], "global"), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(col0, x[keep, 0])


def test_existing_output_needs_overwrite(sample, ingested):
    proc = run("ingest", sample[0], ingested[0])
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_overwrite_replaces_an_existing_store(sample, tmp_path):
    out = tmp_path / "s.zarr"
    run("ingest", sample[0], out, check=True)
    run("ingest", sample[0], out, "--overwrite", "--clr", "per-k", check=True)
    assert store_attrs(out)["transform"]["scope"] == "per_k"


@pytest.mark.parametrize("codec,message", [("zstd:99", "codec zstd takes a level from 1 to 22, got 99"),
                                           ("gzip:12", "codec gzip takes a level from 0 to 9, got 12"),
                                           ("lz4:x", "codec level must be an integer, got 'x'"),
                                           ("none:3", "codec none takes no level")])
def test_a_codec_level_out_of_range_is_one_line_and_exit_2(sample, tmp_path, codec, message):
    out = tmp_path / "s.zarr"
    proc = run("ingest", sample[0], out, "--codec", codec)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"ingest: error: {message}"], proc.stderr
    assert not out.exists()


def test_the_hint_after_a_bad_row_is_a_command_that_works(tmp_path):
    x = random_kmers(12, seed=9)
    x[5, 9100] = np.nan
    npy, out = write_npy(tmp_path / "x.npy", x), tmp_path / "x.zarr"
    failed = run("ingest", npy, out, "--chunk-rows", 4)
    assert failed.returncode == 2 and "rerun with --on-bad-rows drop --overwrite" in failed.stderr
    run("ingest", npy, out, "--chunk-rows", 4, "--on-bad-rows", "drop", "--overwrite", check=True)
    assert store_attrs(out)["dropped_rows"] == [5] and store_attrs(out)["complete"] is True


def test_resume_of_a_complete_store_with_its_options_says_there_is_nothing_to_do(sample, tmp_path):
    out = tmp_path / "s.zarr"
    run("ingest", sample[0], out, "--chunk-rows", 50, check=True)
    before = _files(out)
    proc = run("ingest", sample[0], out, "--chunk-rows", 50, "--resume", check=True)
    assert proc.stdout.strip() == f"{out}: already complete, with these options; nothing to do"
    assert _files(out) == before


def test_resume_of_a_complete_store_with_other_options_is_refused(sample, tmp_path):
    out = tmp_path / "s.zarr"
    run("ingest", sample[0], out, "--chunk-rows", 50, "--labels", sample[1], check=True)
    proc = run("ingest", sample[0], out, "--chunk-rows", 60, "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "the existing complete store differs in chunk_rows, labels" in proc.stderr


def test_resume_with_other_options_is_refused(sample, tmp_path):
    out = tmp_path / "s.zarr"
    run("ingest", sample[0], out, "--chunk-rows", 50, check=True)
    zarr.open_group(str(out), mode="r+").attrs["kmervae"] = {**store_attrs(out), "complete": False}
    proc = run("ingest", sample[0], out, "--chunk-rows", 60, "--resume")
    assert proc.returncode == 2 and "differs in" in proc.stderr and "chunk_rows" in proc.stderr


# ---- interrupted runs ----

def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_resume_clears_half_written_chunk_files_of_an_interrupted_run(tmp_path):
    """zarr writes each chunk to a `.partial` file and renames it; a kill can leave one behind."""
    from kmervae_core.store.convert import IngestPlan, ingest_chunk, prepare
    from kmervae_core.store.npy_source import open_npy
    npy = write_npy(tmp_path / "x.npy", random_kmers(64, seed=4))
    run("ingest", npy, tmp_path / "full.zarr", "--chunk-rows", "8", "--quiet", check=True)
    out = tmp_path / "cut.zarr"
    plan = IngestPlan(source=open_npy(str(npy)), url=str(out), chunk_rows=8)
    prepare(plan, resume=False, overwrite=False)
    for chunk in range(5):  # a run killed after 5 of 8 chunks, in the middle of writing the 6th
        ingest_chunk(plan, chunk)
    debris = out / "clr" / "c" / "5" / "0.5f3a9c.partial"
    debris.parent.mkdir(parents=True, exist_ok=True)
    debris.write_bytes(b"half a chunk")
    run("ingest", npy, out, "--chunk-rows", "8", "--quiet", "--resume", check=True)
    assert not list(out.rglob("*.partial"))
    assert _files(out) == _files(tmp_path / "full.zarr")


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """An ingest killed after 50 of its 750 chunks (its state then: completeness and done
    markers), run again without --resume, then resumed; and the store an unbroken run writes."""
    d = tmp_path_factory.mktemp("killed")
    npy = write_npy(d / "x.npy", np.tile(random_kmers(500, seed=9), (6, 1)))
    args = ["--chunk-rows", "8", "--workers", "1", "--quiet"]
    run("ingest", npy, d / "full.zarr", *args, check=True)

    out = d / "cut.zarr"
    child = subprocess.Popen([sys.executable, "-m", "ingest", str(npy), str(out), *args], cwd=ROOT)
    markers = out / "_ingest_done" / "c"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(markers.glob("*"))) < 50:
        time.sleep(0.01)
    child.kill()
    child.wait()
    # a marker being written when the kill came is a `*.partial` file, not a marker: --resume deletes it
    complete, written = store_attrs(out)["complete"], len([m for m in markers.glob("*") if ".partial" not in m.name])
    refused = run("ingest", npy, out, *args)
    resumed = run("ingest", npy, out, "--chunk-rows", "8", "--workers", "2", "--resume", check=True)
    return {"complete": complete, "written": written, "refused": refused, "resumed": resumed,
            "store": _files(out), "full": _files(d / "full.zarr")}


@pytest.mark.slow
def test_a_killed_ingest_leaves_a_store_not_marked_complete(killed):
    assert killed["complete"] is False, "ingest finished before it could be killed"
    assert 50 <= killed["written"] < 750


@pytest.mark.slow
def test_a_killed_ingest_is_refused_without_resume(killed):
    assert killed["refused"].returncode == 2 and "--resume" in killed["refused"].stderr


@pytest.mark.slow
def test_resume_keeps_the_chunks_already_written(killed):
    assert f"({killed['written']} chunks kept" in killed["resumed"].stdout


@pytest.mark.slow
def test_killed_ingest_resumes_to_an_identical_store(killed):
    assert killed["store"] == killed["full"]


# ---- bounded memory ----

@pytest.mark.slow
def test_peak_memory_does_not_grow_with_input_size(tmp_path):
    """A 1.3 GB input through 2 workers stays under 400 MiB of resident memory."""
    rows = 30000
    npy = tmp_path / "big.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 10965)})
        block = random_kmers(3000, seed=10).tobytes()
        for _ in range(rows // 3000):
            f.write(block)
    probe = ("import resource, subprocess, sys;"
             "subprocess.run(sys.argv[1:], check=True);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "ingest", str(npy),
                           str(tmp_path / "big.zarr"), "--workers", "2", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    peak_mib = int(proc.stdout.split()[-1]) / 1024
    assert npy.stat().st_size > 3 * 400 * 2**20
    assert peak_mib < 400, f"peak RSS {peak_mib:.0f} MiB"
    assert store_attrs(tmp_path / "big.zarr")["complete"] is True


# ---- dask.distributed ----

@pytest.mark.slow
def test_distributed_scheduler_writes_the_same_store(sample, tmp_path):
    from distributed import LocalCluster
    npy, _ = sample
    run("ingest", npy, tmp_path / "local.zarr", "--chunk-rows", 64, check=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run("ingest", npy, tmp_path / "dist.zarr", "--chunk-rows", 64, "--scheduler", cluster.scheduler_address,
            check=True)
    local, dist = _files(tmp_path / "local.zarr"), _files(tmp_path / "dist.zarr")
    assert local.keys() == dist.keys()
    assert {k: v for k, v in local.items() if k != "zarr.json"} == {k: v for k, v in dist.items() if k != "zarr.json"}


def rows_with_two_bad(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """30 input rows, rows 3 and 20 holding a NaN, and a label per row."""
    x = random_kmers(30, seed=12)
    x[[3, 20], 9000] = np.nan
    return write_npy(tmp_path / "x.npy", x), np.arange(30, dtype=np.int32) % 7


def test_labels_are_stored_in_store_order_and_follow_dropped_rows(tmp_path):
    npy, labels = rows_with_two_bad(tmp_path)
    lab = write_npy(tmp_path / "l.npy", labels)
    out = tmp_path / "x.zarr"
    run("ingest", npy, out, "--chunk-rows", 8, "--on-bad-rows", "drop", "--labels", lab, check=True)
    stored = zarr.open_group(str(out), mode="r")["labels"][:]
    np.testing.assert_array_equal(stored, np.delete(labels, [3, 20]))
    assert stored.dtype == np.int64 and store_attrs(out)["labels"] == str(lab)


def test_labels_of_another_length_are_one_line(tmp_path):
    npy, labels = rows_with_two_bad(tmp_path)
    short = write_npy(tmp_path / "short.npy", labels[:-1])
    proc = run("ingest", npy, tmp_path / "y.zarr", "--labels", short)
    assert proc.returncode == 2 and "29 labels for 30 input rows" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
