"""python -m train.compare RUN_DIR...: one table of the runs' differing settings and outcomes
(final and best validation loss, per-k MSE, KL, active units, distance Spearman, label kNN;
Markdown, or CSV with --csv) and a plot of their latent metrics over epochs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmervae_core.evaluation.report import comparison_table, csv_text, default_plot_path, markdown, plot_latent_metrics
from kmervae_core.errors import KmervaeError
from kmervae_core.outputs import FILE, check_output, writing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__)
    p.add_argument("run_dirs", type=Path, nargs="+", help="training run folders (--out of python -m train)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    p.add_argument("--plot", type=Path, default=None,
                   help="where to write the latent-metrics figure (default: compare_latent.png in the folder "
                        "holding the runs)")
    args = p.parse_args(argv)
    try:
        header, rows = comparison_table(args.run_dirs)
        plot = args.plot or default_plot_path(args.run_dirs)
        check_output(plot, FILE)
        with writing(plot):
            plot = plot_latent_metrics(args.run_dirs, plot)
    except KmervaeError as e:
        print(f"train.compare: error: {e}", file=sys.stderr)
        return 2
    print(csv_text(header, rows) if args.csv else markdown(header, rows), end="")
    print(f"wrote {plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
