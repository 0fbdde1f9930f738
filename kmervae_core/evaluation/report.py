"""What runs did, as pictures and tables: one run's report (PNG figures and a Markdown page, from
RUN_DIR/history.json, config.json and heldout_latents.npz), and runs side by side (the settings
in which they differ and their outcomes in one table, their latent metrics in one figure).
Settings, not outcomes, tell runs apart, so only the settings that differ get a column."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import KmervaeError
from ..store.kmers import KMER_GROUPS, USED_KS
from ..summary import history_key, kl_block_key, kl_blocks_in_history, mse_key

IGNORED_SETTINGS = ("out",)  # differs between any two runs by construction
# (column, history key at the last epoch); "best val loss" is the lowest over all epochs
VAL_LOSS = history_key("val", "loss")
OUTCOMES = ([("final val loss", VAL_LOSS)]
            + [(f"val MSE {k}-mer", history_key("val", mse_key(k))) for k in USED_KS]
            + [("val KL", history_key("val", "kl")), ("active units", history_key("latent", "active_units")),
               ("distance Spearman", history_key("latent", "spearman")), ("kNN", history_key("latent", "knn"))])
# (history key, panel title, y-axis label) of each latent metric
LATENT_CURVES = ((history_key("latent", "active_units"), "Active latent units (variance > 0.01)", "units"),
                 (history_key("latent", "spearman"), "Latent/input distance Spearman", "Spearman ρ"),
                 (history_key("latent", "knn"), "Label kNN accuracy (k=5)", "accuracy"))
RUN_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("x", "--"))  # runs that coincide stay visible


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KmervaeError("the figures need matplotlib: pip install 'kmervae[report]' (or matplotlib)") from None
    return plt


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one history key, where the epoch recorded it."""
    points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def projection_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal components of the latents (centred SVD)."""
    centred = np.asarray(z, dtype=np.float64) - np.asarray(z, dtype=np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def latent_size(config: dict) -> int | None:
    """The run's latent dimensions (the blocks' sum for a per-scale run), from config.json."""
    blocks = config.get("latent_blocks") or []
    return sum(blocks) if blocks else config.get("latent")


# ---- one run ----

def write_report(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/report/*.png and report.md; return the files written."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    history_path = run_dir / "history.json"
    if not history_path.is_file():
        raise KmervaeError(f"{run_dir}: no history.json (not a training run folder, or no epoch finished yet)")
    history = json.loads(history_path.read_text())
    if not history:
        raise KmervaeError(f"{history_path}: no epochs recorded")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written: list[Path] = []

    def figure(name: str, title: str, panels: list[tuple[str, list[tuple[str, str]], str, bool]],
               finish=lambda axes: None) -> None:
        """One figure of side-by-side panels (title, curves (key, label), y label, log scale);
        `finish(axes)` adds what the curves do not say before it is saved."""
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (sub, curves, ylabel, log) in zip(axes[0], panels):
            for key, label in curves:
                epochs, values = series(history, key)
                if values:
                    ax.plot(epochs, values, marker="o", markersize=3, label=label)
            ax.set(title=sub, xlabel="epoch", ylabel=ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if len(ax.lines) > 3:  # many curves: the legend beside the panel, not over them
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
            elif len(ax.lines) > 1:
                ax.legend()
        finish(axes[0])
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    def both(term: str) -> list[tuple[str, str]]:
        return [(history_key("train", term), "train"), (history_key("val", term), "validation")]

    figure("losses.png", "Losses per row: loss = reconstruction + β × KL",
           [("Loss", both("loss"), "per row", True), ("Reconstruction (weighted MSE)", both("recon"), "per row", True),
            ("KL divergence", both("kl"), "per row", True)])
    split = "val" if any(history_key("val", "mse") in h for h in history) else "train"
    figure("kmer_mse.png", f"Per-k-mer reconstruction MSE ({'validation' if split == 'val' else 'train'})",
           [("", [(history_key(split, mse_key(g.k)), f"{g.k}-mer") for g in KMER_GROUPS]
             + [(history_key(split, "mse"), "all")], "MSE", True)])
    figure("beta_lr.png", "Schedules", [("β (KL weight)", [("beta", "β")], "β", False),
                                       ("Learning rate", [("lr", "learning rate")], "learning rate", True)])
    figure("latent.png", "Embedding quality (held-out sample)",
           [(title, [(key, title)], ylabel, False) for key, title, ylabel in LATENT_CURVES[1:]])
    if any(h.get(LATENT_CURVES[0][0]) is not None for h in history):
        size = latent_size(config)
        figure("active_units.png", "Active latent units (held-out sample)",
               [(LATENT_CURVES[0][1], [(LATENT_CURVES[0][0], "active units")], "units", False)],
               finish=lambda axes: size and _bound_active_units(axes[0], size))

    latents = run_dir / "heldout_latents.npz"
    if latents.is_file():
        data = np.load(latents)
        xy = projection_2d(data["z"])
        fig, ax = plt.subplots(figsize=(6, 6))
        if "labels" in data:
            for label in np.unique(data["labels"]):
                pick = data["labels"] == label
                ax.scatter(xy[pick, 0], xy[pick, 1], s=4, label=str(label))
            ax.legend(title="label", markerscale=3, fontsize=7, ncol=2)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=4)
        ax.set(title=f"Held-out z_mean, first two principal components ({len(xy):,} rows)",
               xlabel="PC1", ylabel="PC2")
        fig.tight_layout()
        fig.savefig(out / "latents_pca.png", dpi=100)
        plt.close(fig)
        written.append(out / "latents_pca.png")

    last = history[-1]
    best = next((h for h in reversed(history) if h.get("best")), last)
    rows = [("epochs", f"{last['epoch']}"), ("best epoch (as selected)", f"{best['epoch']}")]
    for key, label in [(history_key("train", "recon"), "train reconstruction"),
                       (history_key("val", "loss"), "validation loss"),
                       (history_key("val", "mse"), "validation MSE"), (history_key("latent", "active_units"), "active units"),
                       (history_key("latent", "spearman"), "distance Spearman"), (history_key("latent", "knn"), "kNN accuracy"),
                       ("samples_per_s", "samples/s")]:
        if last.get(key) is not None:
            rows.append((label, f"{last[key]:,.4g}" + (f" (best epoch: {best[key]:,.4g})" if best.get(key) is not None else "")))
    page = [f"# kmervae run report: {run_dir.resolve().name}", "", "| | last epoch |", "|---|---|"]
    page += [f"| {k} | {v} |" for k, v in rows]
    page += [""] + [f"![{p.stem}]({p.name})" for p in written]
    (out / "report.md").write_text("\n".join(page) + "\n")
    written.append(out / "report.md")
    return written


def _bound_active_units(ax, size: int) -> None:
    """Active units run from 0 to the latent size, which the axis shows as its top, marked."""
    ax.axhline(size, color="grey", linestyle="--", linewidth=1, label=f"latent size ({size})")
    ax.set_ylim(0, size * 1.05)
    ax.legend()


# ---- runs side by side ----
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
    """config.json keys (the settings, and data_clr: the store's CLR) whose values are not the
    same in every run; absent counts as a value, so a run from before a key was recorded shows
    a blank beside the others."""
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


def default_plot_path(run_dirs: list[Path]) -> Path:
    """Where the comparison figure goes unless asked: beside the runs (the folder holding them)."""
    return Path(os.path.commonpath([str(d.resolve().parent) for d in run_dirs])) / "compare_latent.png"


def plot_latent_metrics(run_dirs: list[Path], path: Path) -> Path:
    """latent_figure(run_dirs), written to `path` (its folder made where missing)."""
    fig = latent_figure(run_dirs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def latent_figure(run_dirs: list[Path]):
    """One panel per latent metric, one line per run, over epochs; one legend for all panels.
    Runs with the same values stay visible: each has its own marker and dash, and its points
    are set a little aside from the epoch (runs side by side, as in a dodged bar chart)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, len(LATENT_CURVES), figsize=(5 * len(LATENT_CURVES), 4.6))
    sizes, width = [], min(0.3, 0.6 / max(1, len(run_dirs) - 1))
    for i, d in enumerate(run_dirs):
        config, history = load_run(d)
        sizes.append(latent_size(config))
        marker, dash = RUN_STYLES[i % len(RUN_STYLES)]
        aside = (i - (len(run_dirs) - 1) / 2) * width / 2
        for ax, (key, _, _) in zip(axes, LATENT_CURVES):
            epochs, values = series(history, key)
            if values:
                ax.plot([e + aside for e in epochs], values, marker=marker, linestyle=dash, markersize=5,
                        markerfacecolor="none", label=d.name, color=f"C{i % 10}")
    for ax, (_, title, ylabel) in zip(axes, LATENT_CURVES):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if all(sizes) and axes[0].lines:
        axes[0].set_ylim(0, max(sizes) * 1.05)
    lines = next((ax.get_legend_handles_labels() for ax in axes if ax.lines), None)
    if lines:  # runs without latent metrics (--latent-sample 0) draw nothing
        fig.legend(*lines, loc="lower center", ncol=min(len(run_dirs), 6), title="run")
    fig.suptitle("Latent metrics of the held-out sample, by run")
    fig.tight_layout(rect=(0, 0.14 if lines else 0, 1, 1))
    return fig
