"""Every output path of every command, one table: a read-only folder, an existing file, an
existing folder, a parent that is a file and a missing parent. Each refusal is one line
`prog: error: ...` with exit 2 and nothing written; each case that can work (a missing parent is
made) works. And a disk that fills during a run ends in one line naming the file system and the
newest sound checkpoint.

As root (CI runs as root) a folder's mode does not stop a write: the read-only case mounts a
read-only tmpfs instead, and is skipped where mounting is not permitted; as another user it is a
folder of mode 0555. train.evaluate writes nothing (it prints), so it has no row here; ingest
--verify only reads, so its row says a store on a read-only file system verifies."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kmervae_core.outputs import one_line
from kmervae_core.training.checkpoint import list_checkpoints, read_checkpoint
from tests.conftest import train_here
from tests.test_rank_agreement import launch, one_line_from_one_rank
from tests.test_train import TINY, train_args

pytestmark = pytest.mark.slow
CASES = ("read-only", "existing file", "existing folder", "parent is a file", "missing parent")
OK = None  # the command succeeds


def mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """`make(fill)`: a read-only folder after `fill(folder)` has put what the case needs in it."""
    mounted: list[Path] = []

    def make(fill=lambda folder: None) -> Path:
        folder = tmp_path / "ro"
        if os.geteuid() != 0:
            folder.mkdir()
            fill(folder)
            folder.chmod(0o555)
            return folder
        if not mount_tmpfs(folder, "size=64m"):
            pytest.skip("a read-only folder as root needs a read-only mount, and mounting is not permitted here")
        mounted.append(folder)
        fill(folder)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return folder
    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def finished_run(train_store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("outputs") / "run"
    train_here(*train_args(train_store[0], run, "--epochs", 1, *TINY))
    return run


@pytest.fixture
def signals_kept():
    """python -m train installs signal handlers: the test process gets its own back."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in kept.items():
        signal.signal(s, handler)


def cli(module: str, *args) -> tuple[int, str, str]:
    """`python -m module args` run in this process (imports are the cost of a child): (status,
    stderr, stdout)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = importlib.import_module(f"{module}.__main__" if "." not in module else module).main(
                [str(a) for a in args])
        except SystemExit as e:
            status = e.code
    return status, err.getvalue(), out.getvalue()


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


# command -> what it writes (where the case's path goes), and each case's outcome: OK, or the
# words its one line must hold
COMMANDS = {
    "train": {"read-only": "read-only file system", "existing file": "is a file, not a folder",
              "existing folder": OK, "parent is a file": "is a file, not a folder", "missing parent": OK},
    "train.encode": {"read-only": "read-only file system", "existing file": "is a file, not a store",
                     "existing folder": "already exists; pass --overwrite", "parent is a file": "is a file, not a folder",
                     "missing parent": OK},
    "train.encode --overwrite": {"read-only": "read-only file system", "existing file": "is a file, not a store",
                                 "existing folder": "is a folder that is not a Zarr store", "parent is a file": "is a file, not a folder",
                                 "missing parent": OK},
    "ingest": {"read-only": "read-only file system", "existing file": "is a file, not a store",
               "existing folder": "already holds something; pass --resume", "parent is a file": "is a file, not a folder",
               "missing parent": OK},
    "ingest --overwrite": {"read-only": "read-only file system", "existing file": "is a file, not a store",
                           "existing folder": "is a folder that is not a Zarr store",
                           "parent is a file": "is a file, not a folder", "missing parent": OK},
    "ingest --verify": {"read-only": OK, "existing file": "not a kmervae store",
                        "existing folder": "not a kmervae store", "parent is a file": "no such store",
                        "missing parent": "no such store"},
    "train.report": {"read-only": "read-only file system", "existing file": "is a file, not a folder",
                     "existing folder": OK, "parent is a file": "not a training run folder",
                     "missing parent": "not a training run folder"},
    "train.compare --plot": {"read-only": "read-only file system", "existing file": OK,
                             "existing folder": "is a folder, not a file", "parent is a file": "is a file, not a folder",
                             "missing parent": OK},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_output_path_is_written_or_refused_in_one_line_leaving_nothing(
        command, case, train_store, sample, finished_run, read_only, signals_kept, tmp_path):
    store, encoder = train_store[0], finished_run / "vae_multi_encoder_final.pt"
    run_copy = lambda folder: shutil.copytree(finished_run, folder / "run")  # noqa: E731
    if command == "ingest --verify":  # the path is a store to read: a real one on the read-only mount
        fill = lambda folder: shutil.copytree(store, folder / "out")  # noqa: E731
    elif command == "train.report":  # the path is a run folder; what the command writes is RUN/report
        fill = run_copy
    else:
        fill = lambda folder: None  # noqa: E731
    name = "out.png" if command.startswith("train.compare") else "out"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if case == "read-only":
        scratch = read_only(fill)
        out = scratch / ("run" if command == "train.report" else name)
    elif case == "existing file":
        if command == "train.report":
            run_copy(scratch)
            (scratch / "run" / "report").write_text("the user's")
            out = scratch / "run"
        else:
            (out := scratch / name).write_text("the user's")
    elif case == "existing folder":
        if command == "train.report":
            run_copy(scratch)
            (scratch / "run" / "report").mkdir()
            out = scratch / "run"
        else:
            (out := scratch / name).mkdir()
            (out / "mine.txt").write_text("the user's")
    elif case == "parent is a file":
        (scratch / "file").write_text("the user's")
        out = scratch / "file" / name
    else:
        out = scratch / "missing" / "parent" / name
        if command == "train.report":  # a run folder that is not there: nothing to report on
            out = scratch / "missing" / "run"
    before = tree(scratch)
    module, *flags = command.split()
    args = {
        "train": lambda: train_args(store, out, "--epochs", 1, *TINY),
        "train.encode": lambda: ["--checkpoint", encoder, "--data", store, "--out", out, *flags],
        "ingest": lambda: (["--verify", out, "--quiet"] if flags == ["--verify"] else [sample[0], out, "--quiet", *flags]),
        "train.report": lambda: [out],
        "train.compare": lambda: [finished_run, "--plot", out],
    }[module]()
    status, err, _ = cli(module, *args)
    expected = COMMANDS[command][case]
    if expected is OK:
        assert status == 0, err
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, (status, err[-2000:])
    assert lines[0].startswith(f"{module}: error: ") and expected in lines[0], lines[0]
    assert tree(scratch) == before


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_disk_that_fills_during_a_run_ends_in_one_line_naming_it_and_the_newest_sound_checkpoint(
        train_store, signals_kept, tmp_path, ranks):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=12m"):  # two checkpoints of the tiny model (4.4 MB each) and its exports fit
        pytest.skip("a small disk needs a tmpfs mount, and mounting is not permitted here")
    try:
        args = train_args(train_store[0], disk / "run", "--epochs", 5, "--checkpoint-every", 4, *TINY)
        if ranks == 1:
            status, err, _ = cli("train", *args)
            lines = [line for line in err.splitlines() if line.strip()]
            assert status == 2 and len(lines) == 1, err[-2000:]
            line = lines[0]
        else:  # every rank ends with the status, one of them with the line
            line = one_line_from_one_rank(launch("train", *args))
        kept = list_checkpoints(disk / "run")
        where = "rank 0: " if ranks > 1 else ""
        assert kept and line.startswith(f"train: error: {where}no space left on {disk} writing {disk / 'run'}"), line
        assert line.endswith(f"the checkpoints already written are sound (last good checkpoint {kept[-1]})"), line
        for path in kept:  # whole: each resumes
            assert read_checkpoint(path)["trainer"]["epoch"] >= 0
        assert not list((disk / "run").rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("text, limit, line", [
    ("failed finding central directory. This is an internal miniz error. If you see this", 60,
     "failed finding central directory."),  # whole sentences where one fits
    ("PytorchStreamReader failed reading zip archive: failed finding central directory", 40,
     "PytorchStreamReader failed reading zip ..."),  # else whole words
    ("short\nsecond line", 40, "short"),
])
def test_a_quoted_error_is_cut_between_sentences_or_words_never_inside_one(text, limit, line):
    assert one_line(text, limit) == line


def test_labels_that_are_not_one_integer_per_row_are_named_as_such(finished_run, train_store, tmp_path):
    latents = tmp_path / "latents.zarr"
    assert cli("train.encode", "--checkpoint", finished_run / "vae_multi_encoder_final.pt", "--data", train_store[0],
               "--out", latents)[0] == 0
    np.save(tmp_path / "labels.npy", np.zeros((600, 4), dtype=np.float32))
    status, err, _ = cli("train.evaluate", latents, "--labels", tmp_path / "labels.npy")
    assert (status, err) == (2, f"train.evaluate: error: {tmp_path / 'labels.npy'}: needs one integer label (genome or "
                                "bin id) per row, 600 in all; it holds float32 of shape (600, 4)\n")


def test_a_decoder_given_to_encode_is_named_with_the_encoder_beside_it(finished_run, train_store, tmp_path):
    decoder = finished_run / "vae_multi_decoder_final.pt"
    status, err, _ = cli("train.encode", "--checkpoint", decoder, "--data", train_store[0], "--out", tmp_path / "z")
    assert (status, err) == (2, f"train.encode: error: {decoder}: a decoder export, not an encoder; pass the encoder "
                                f"exported beside it, {finished_run / 'vae_multi_encoder_final.pt'}\n")
    assert not (tmp_path / "z").exists()
