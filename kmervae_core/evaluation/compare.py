"""Runs side by side: the settings in which they differ (config.json) and their outcomes
(history.json) in one table, and the latent metrics of all of them over epochs in one figure.
Settings, not outcomes, tell runs apart, so only the settings that differ get a column."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import KmervaeError
from ..store.kmers import USED_KS
from ..summary import history_key, kl_block_key, kl_blocks_in_history, mse_key
from .report import _series

IGNORED_SETTINGS = ("out",)  # differs between any two runs by construction
# (column, history key at the last epoch); "best val loss" is the lowest over all epochs
VAL_LOSS = history_key("val", "loss")
OUTCOMES = ([("final val loss", VAL_LOSS)]
            + [(f"val MSE {k}-mer", history_key("val", mse_key(k))) for k in USED_KS]
            + [("val KL", history_key("val", "kl")), ("active units", history_key("latent", "active_units")),
               ("distance Spearman", history_key("latent", "spearman")), ("kNN", history_key("latent", "knn"))])
LATENT_CURVES = ((history_key("latent", "active_units"), "active units"),
                 (history_key("latent", "spearman"), "latent/input distance Spearman"),
                 (history_key("latent", "knn"), "label kNN accuracy (k=5)"))


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config, history) of a run folder; KmervaeError with one line if either is missing or empty."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
    except FileNotFoundError as e:
        raise KmervaeError(f"{run_dir}: no {Path(e.filename).name} (not a training run folder, or no epoch finished)") from None
    except json.JSONDecodeError as e:
        raise KmervaeError(f"{run_dir}: unreadable run files ({e})") from None
    if not history:
        raise KmervaeError(f"{run_dir}: no epochs recorded in history.json")
    return config, history


def differing_settings(configs: list[dict]) -> list[str]:
    """Setting names whose values are not the same in every run (absent counts as a value)."""
    names = sorted({k for c in configs for k in c} - set(IGNORED_SETTINGS))
    return [k for k in names if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(_text(v) if not isinstance(v, list) else "/".join(map(str, v)) for v in value)
    return str(value)


def comparison_table(run_dirs: list[Path]) -> tuple[list[str], list[list[str]]]:
    """(header, one row of text cells per run)."""
    runs = [load_run(d) for d in run_dirs]
    settings = differing_settings([c for c, _ in runs])
    blocks = sorted({b for _, h in runs for b in kl_blocks_in_history(h[-1], "val")})
    outcomes = OUTCOMES + [(f"val KL block {b}", history_key("val", kl_block_key(b))) for b in blocks]
    present = [(name, key) for name, key in outcomes if any(h[-1].get(key) is not None for _, h in runs)]
    header = ["run", *settings, "epochs run", "best val loss", *[name for name, _ in present]]
    rows = []
    for d, (config, history) in zip(run_dirs, runs):
        val = [h[VAL_LOSS] for h in history if h.get(VAL_LOSS) is not None]
        rows.append([d.name, *[_text(config.get(s)) for s in settings], str(history[-1]["epoch"]),
                     _text(min(val) if val else None), *[_text(history[-1].get(key)) for _, key in present]])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue()


def plot_latent_metrics(run_dirs: list[Path], path: Path) -> Path:
    """One panel per latent metric, one line per run, over epochs."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KmervaeError("the plot needs matplotlib: pip install 'kmervae[report]' (or matplotlib)") from None
    fig, axes = plt.subplots(1, len(LATENT_CURVES), figsize=(5 * len(LATENT_CURVES), 4))
    for d in run_dirs:
        _, history = load_run(d)
        for ax, (key, _) in zip(axes, LATENT_CURVES):
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, marker="o", markersize=3, label=d.name)
    for ax, (_, title) in zip(axes, LATENT_CURVES):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    labelled = [ax for ax in axes if ax.lines]
    if labelled:  # runs without latent metrics (--latent-sample 0) draw nothing
        labelled[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
