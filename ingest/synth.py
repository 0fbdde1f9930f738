"""python -m ingest.synth OUT.npy: write a realistic synthetic all_kmers.npy and its labels
(genome of origin per row), for demos and tests."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from kmervae_core.cli_help import DefaultsHelp
from kmervae_core.store.synth import write_sample


def labels_path(npy_path: str) -> str:
    """Where the labels of a sample go by default: beside it, `<stem>_labels.npy`."""
    return npy_path.removesuffix(".npy") + "_labels.npy"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ingest.synth", description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("output", help="the .npy to write (N x 10,965 float32)")
    p.add_argument("--rows", type=int, default=5000, help="contigs to simulate")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same sample")
    p.add_argument("--genomes", type=int, default=10, help="source genomes (distinct compositions)")
    p.add_argument("--labels", default=None, help="where the labels go (default: beside OUTPUT, as OUTPUT_labels.npy)")
    args = p.parse_args(argv)
    if args.rows < 1 or args.genomes < 1:
        print("ingest.synth: error: --rows and --genomes must be at least 1", file=sys.stderr)
        return 2
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        print(f"ingest.synth: error: {parent}: no such directory", file=sys.stderr)
        return 2
    start = time.perf_counter()
    labels = write_sample(args.output, args.rows, seed=args.seed, genomes=args.genomes)
    np.save(args.labels or labels_path(args.output), labels.astype(np.int64))
    print(f"wrote {args.output}: {args.rows:,} contigs from {args.genomes} genomes "
          f"({os.path.getsize(args.output) / 1e6:,.1f} MB) and {args.labels or labels_path(args.output)} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
