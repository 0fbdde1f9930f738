"""python -m train.evaluate LATENTS.zarr --labels LABELS.npy: how well the latents separate known
groups (leave-one-out kNN accuracy, k=5), beside chance and, with --store, the CLR input itself."""
from __future__ import annotations

import argparse
import sys

import numpy as np
import zarr

from kmervae_core.errors import KmervaeError
from kmervae_core.evaluation.embedding import knn_accuracy
from kmervae_core.store.contract import open_store, read_rows
from kmervae_core.words import counted

MAX_ROWS = 20000  # kNN is quadratic: larger inputs are evaluated on a seeded sample


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    p.add_argument("latents", help="a store written by python -m train.encode")
    p.add_argument("--labels", required=True, help="an int .npy with one label per store row")
    p.add_argument("--store", help="the kmervae store, to compare with kNN on the CLR input")
    p.add_argument("-k", type=int, default=5, help="neighbours that vote for each row's label (default 5)")
    args = p.parse_args(argv)
    try:
        try:
            z = zarr.open_group(store=args.latents, mode="r")["z_mean"]
        except Exception:  # noqa: BLE001 - any unreadable store is one user-facing line
            raise KmervaeError(f"{args.latents}: not a latents store (no z_mean)") from None
        try:
            labels = np.load(args.labels, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise KmervaeError(f"{args.labels}: cannot read labels ({e})") from None
        if labels.shape != (z.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise KmervaeError(f"{args.labels}: needs one integer label (genome or bin id) per row, {z.shape[0]:,} "
                               f"in all; it holds {labels.dtype} of shape {labels.shape}")
        rows = np.arange(z.shape[0])
        if len(rows) > MAX_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(rows, MAX_ROWS, replace=False))
        if not 1 <= args.k < len(rows):
            raise KmervaeError(f"-k {args.k}: the neighbours must number from 1 to {len(rows) - 1} "
                               f"(one fewer than the {len(rows):,} rows evaluated)")
        chance = np.unique(labels[rows], return_counts=True)[1].max() / len(rows)
        line = (f"kNN accuracy (k={args.k}, {counted(len(rows), 'row')}, {counted(len(np.unique(labels)), 'label')}): "
                f"latents {knn_accuracy(z.oindex[rows], labels[rows], args.k):.3f}")
        if args.store:
            info = open_store(args.store)
            clr = info.clr_array
            line += f", CLR input {knn_accuracy(read_rows(info.url, clr, rows), labels[rows], args.k):.3f}"
        print(line + f", chance {chance:.3f}")
        return 0
    except KmervaeError as e:
        print(f"train.evaluate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
