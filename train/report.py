"""python -m train.report RUN_DIR: figures (losses, per-k-mer MSE, β and learning rate, latent
metrics, a 2-D projection of the latent sample's z_mean from the best epoch's encoder, coloured by
label) and RUN_DIR/report/report.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmervae_core.errors import KmervaeError
from kmervae_core.evaluation.report import write_report
from kmervae_core.outputs import FOLDER, check_output, writing
from kmervae_core.words import counted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.report", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a training run folder (--out of python -m train)")
    args = p.parse_args(argv)
    try:
        if args.run_dir.is_dir():
            check_output(args.run_dir / "report", FOLDER)
        with writing(args.run_dir / "report"):
            files = write_report(args.run_dir)
    except KmervaeError as e:
        print(f"train.report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {counted(len(files), 'file')} in {args.run_dir / 'report'}: " + ", ".join(f.name for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
