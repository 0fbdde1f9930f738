"""The folder rules of docs/design.md: `store/` (and so `python -m ingest`) works where torch is not
installed, and train never imports ingest."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

from conftest import ROOT, child_env

# Makes `import torch` fail as it does where torch is not installed, then runs the given code.
NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
"""


def without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code, *args], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True)


def test_every_module_of_the_store_folder_imports_without_torch():
    modules = [f"kmervae_core.store.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "kmervae_core" / "store")])]
    assert {"kmervae_core.store.contract", "kmervae_core.store.convert", "kmervae_core.store.kmers"} <= set(modules)
    proc = without_torch("import importlib, ingest.__main__, ingest.synth\n"
                         f"for m in {modules!r}: importlib.import_module(m)")
    assert proc.returncode == 0, proc.stderr


def test_ingest_and_verify_run_where_torch_cannot_be_imported(tmp_path):
    run_module = "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_module(sys.argv[0], run_name='__main__')"
    npy, store = tmp_path / "all_kmers.npy", tmp_path / "kmers.zarr"
    for args in (("ingest.synth", str(npy), "--rows", "60", "--genomes", "2"),
                 ("ingest", str(npy), str(store), "--chunk-rows", "32"),
                 ("ingest", "--verify", str(store))):
        proc = without_torch(run_module, *args)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    assert (store / "zarr.json").is_file()


def test_train_never_imports_ingest():
    code = "import sys, train.__main__, train.encode, train.evaluate, train.report, train.compare\n" \
           "assert not [m for m in sys.modules if m == 'ingest' or m.startswith('ingest.')], 'ingest was imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_feed_and_the_evaluation_never_import_the_training_loop():
    """feed/ is what users plug into loops of their own, evaluation/ what reads a run's exports: both
    stand below training/ (the process group helpers they need live in the leaf
    kmervae_core/distributed.py)."""
    code = "import sys, kmervae_core.feed.rank_feed, kmervae_core.feed.stream, kmervae_core.feed.cache, " \
           "kmervae_core.evaluation.encode, kmervae_core.evaluation.embedding, kmervae_core.evaluation.report\n" \
           "assert not [m for m in sys.modules if m.startswith('kmervae_core.training')], 'training/ was imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
