"""What runs did, as pictures and tables: one run's report (PNG figures and a Markdown page, from
RUN_DIR/history.json, config.json and the latent sample's latents), and runs side by side (the settings
in which they differ and their outcomes in one table, their latent metrics in one figure).
Settings, not outcomes, tell runs apart, so only the settings that differ get a column."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..config import DATA_CLR
from ..errors import KmervaeError
from ..store.kmers import KMER_GROUPS, USED_KS
from ..summary import history_key, kl_block_key, kl_blocks_in_history, mse_key

IGNORED_SETTINGS = ("out",)  # differs between any two runs by construction
# config.json's records of what a run trained on, beside its settings but not settings (no flag sets
# them): (key, column), shown after the settings where they differ
RECORDS = ((DATA_CLR, "store CLR"),)
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
# the latent sample's z_mean from the best epoch's encoder (validator.py writes it); named when the
# sample was held-out rows, kept so that older runs' reports still find it
SAMPLE_LATENTS = "heldout_latents.npz"
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


def projection_2d(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the latents (centred SVD), and the share of the
    latents' variance each explains."""
    centred = np.asarray(z, dtype=np.float64) - np.asarray(z, dtype=np.float64).mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, (s[:2] ** 2) / max((s ** 2).sum(), 1e-300)


def latent_size(config: dict) -> int | None:
    """The run's latent dimensions (the blocks' sum for a per-scale run), from config.json."""
    blocks = config.get("latent_blocks") or []
    return sum(blocks) if blocks else config.get("latent")


# ---- one run ----

def write_report(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/report/*.png and report.md; return the files written."""
    history, config = read_run(run_dir)
    sample = sample_words(run_dir, config)
    figures = {"losses.png": losses_figure(history, config), "kmer_mse.png": kmer_mse_figure(history),
               "beta_lr.png": schedules_figure(history), "latent.png": latent_metrics_figure(history, sample),
               "active_units.png": active_units_figure(history, config, sample),
               "latents_pca.png": latents_pca_figure(run_dir / SAMPLE_LATENTS)}
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written = [save(fig, out / name) for name, fig in figures.items() if fig is not None]
    (out / "report.md").write_text(report_page(run_dir, history, written))
    return [*written, out / "report.md"]


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    """(history, config) of a run folder for its report; config is {} where config.json is missing."""
    history_path = run_dir / "history.json"
    if not history_path.is_file():
        raise KmervaeError(f"{run_dir}: no history.json (not a training run folder, or no epoch finished yet)")
    history = json.loads(history_path.read_text())
    if not history:
        raise KmervaeError(f"{history_path}: no epochs recorded")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    return history, config


def save(fig, path: Path) -> Path:
    """Write a figure and free it (pyplot keeps every open figure)."""
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def best_record(history: list[dict]) -> dict:
    """The epoch vae_multi_best.pt holds (the last one marked best), or the last epoch."""
    return next((h for h in reversed(history) if h.get("best")), history[-1])


def sample_words(run_dir: Path, config: dict) -> str:
    """What the latent metrics are computed on, not held-out rows (README, "Embedding quality"):
    the sample's size from its latents where kept (a store smaller than --latent-sample gives fewer)."""
    path = run_dir / SAMPLE_LATENTS
    rows = len(np.load(path)["rows"]) if path.is_file() else config.get("latent_sample")
    return f"latent sample: {f'{rows:,} ' if rows else ''}rows drawn from the whole store"


def curves_figure(history: list[dict], title: str, panels: list[tuple[str, list[tuple[str, str]], str, bool]]):
    """One figure of side-by-side panels (title, curves (history key, label), y label, log scale)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (sub, curves, ylabel, log) in zip(axes[0], panels):
        for key, label in curves:
            epochs, values = series(history, key)
            if values:
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set(title=sub, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log and ax.lines:
            ax.set_yscale("log")
            label_log_axis(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def legends(fig) -> None:
    """Each panel's legend where it has several lines: beside the panel for many (not over them)."""
    for ax in fig.axes:
        if len(ax.lines) > 3:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        elif len(ax.lines) > 1:
            ax.legend()
    fig.tight_layout()


def label_log_axis(ax) -> None:
    """Labelled ticks where the curves lie on a log axis: matplotlib labels powers of ten and
    leaves a curve that spans less than a decade (a loss of 11,500-19,000) between unlabelled
    ticks. Five ticks spread evenly in log space over the data, at the fewest significant digits
    (two or more) that keep them apart."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    values = np.concatenate([line.get_ydata() for line in ax.lines]).astype(np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values) or values.max() / values.min() > 1000:  # three decades or more: powers of ten serve
        return
    spread = np.unique(np.geomspace(values.min(), values.max(), 5))  # one tick for a constant curve
    digits = next(d for d in range(2, 18) if len({float(f"{v:.{d}g}") for v in spread}) == len(spread))
    ax.yaxis.set_major_locator(FixedLocator([float(f"{v:.{digits}g}") for v in spread]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.12g}"))  # the rounded values, as written


def losses_figure(history: list[dict], config: dict):
    """Train and validation loss, reconstruction and KL per epoch, the best epoch marked."""
    def both(term: str) -> list[tuple[str, str]]:
        return [(history_key("train", term), "train"), (history_key("val", term), "validation")]

    fig = curves_figure(history, "Losses per row: loss = reconstruction + β × KL",
                        [("Loss", both("loss"), "per row", True),
                         ("Reconstruction (weighted MSE)", both("recon"), "per row", True),
                         ("KL divergence", both("kl"), "per row", True)])
    best = best_record(history)
    for ax in fig.axes:
        ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1.5,
                   label=f"best epoch {best['epoch']} (by {config.get('select_by', 'val_loss')})")
    legends(fig)
    return fig


def kmer_mse_figure(history: list[dict]):
    split = "val" if any(history_key("val", "mse") in h for h in history) else "train"
    fig = curves_figure(history, f"Per-k-mer reconstruction MSE ({'validation' if split == 'val' else 'train'})",
                        [("", [(history_key(split, mse_key(g.k)), f"{g.k}-mer") for g in KMER_GROUPS]
                          + [(history_key(split, "mse"), "all")], "MSE", True)])
    legends(fig)
    return fig


def schedules_figure(history: list[dict]):
    fig = curves_figure(history, "Schedules", [("β (KL weight)", [("beta", "β")], "β", False),
                                               ("Learning rate", [("lr", "learning rate")], "learning rate", True)])
    legends(fig)
    return fig


def latent_metrics_figure(history: list[dict], sample: str):
    """Distance Spearman and, where the store has labels, kNN accuracy, on the latent sample
    (`sample` says what it is); None without either."""
    panels = [(title, [(key, title)], ylabel, False) for key, title, ylabel in LATENT_CURVES[1:]
              if any(h.get(key) is not None for h in history)]
    if not panels:
        return None
    fig = curves_figure(history, f"Embedding quality\n{sample}", panels)
    legends(fig)
    return fig


def active_units_figure(history: list[dict], config: dict, sample: str):
    """Active units on the latent sample over epochs against the latent size (their ceiling),
    drawn over the data line so that a run with every unit active still shows it."""
    key, title, ylabel = LATENT_CURVES[0]
    if not any(h.get(key) is not None for h in history):
        return None
    fig = curves_figure(history, "", [(f"{title}\n{sample}", [(key, "active units")], ylabel, False)])
    ax = fig.axes[0]
    if size := latent_size(config):
        ax.axhline(size, color="C3", linestyle="--", linewidth=1.5, zorder=3, label=f"latent size ({size})")
        ax.set_ylim(0, size * 1.08)
    legends(fig)
    return fig


def latents_pca_figure(path: Path):
    """The latent sample's z_mean from the best epoch's encoder (the one train.encode is given),
    on its first two principal components, by label; None without the file (latent metrics off).
    A file from before it recorded its epoch holds the last epoch's latents, and the title says so."""
    if not path.is_file():
        return None
    data = np.load(path)
    xy, explained = projection_2d(data["z"])
    encoder = f"best epoch's encoder (epoch {int(data['epoch'])})" if "epoch" in data else "last epoch's encoder"
    fig, ax = _pyplot().subplots(figsize=(8, 6))
    if "labels" in data:
        for label in np.unique(data["labels"]):
            pick = data["labels"] == label
            ax.scatter(xy[pick, 0], xy[pick, 1], s=4, label=str(label))
        ax.legend(title="label", markerscale=3, fontsize=7, ncol=1 + len(np.unique(data["labels"])) // 20,
                  loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=4)
    ax.set(title=f"z_mean of the latent sample ({len(xy):,} rows drawn from the whole store),\n"
                 f"{encoder}: first two principal components",
           xlabel=f"PC1 ({explained[0]:.1%} of the variance)", ylabel=f"PC2 ({explained[1]:.1%} of the variance)")
    fig.tight_layout()
    return fig


def report_page(run_dir: Path, history: list[dict], figures: list[Path]) -> str:
    """report.md: the last epoch's figures (with the best epoch's beside them), then the figures."""
    last, best = history[-1], best_record(history)
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
    page += [""] + [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(page) + "\n"


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


def differs(configs: list[dict], key: str) -> bool:
    """Whether a config.json key's value is not the same in every run; absent counts as a value,
    so a run from before a key was recorded shows a blank beside the others."""
    return len({json.dumps(c.get(key), sort_keys=True) for c in configs}) > 1


def differing_settings(configs: list[dict]) -> list[str]:
    """The settings (config.json keys but the records) whose values are not the same in every run."""
    names = sorted({k for c in configs for k in c} - set(IGNORED_SETTINGS) - {key for key, _ in RECORDS})
    return [k for k in names if differs(configs, k)]


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
    records = [(key, column) for key, column in RECORDS if differs([c for c, _ in runs], key)]
    blocks = sorted({b for _, h in runs for b in kl_blocks_in_history(h[-1], "val")})
    outcomes = OUTCOMES + [(f"val KL block {b}", history_key("val", kl_block_key(b))) for b in blocks]
    present = [(name, key) for name, key in outcomes if any(h[-1].get(key) is not None for _, h in runs)]
    header = ["run", *settings, *[column for _, column in records], "epochs run", "best val loss",
              *[name for name, _ in present]]
    rows = []
    for d, (config, history) in zip(run_dirs, runs):
        val = [h[VAL_LOSS] for h in history if h.get(VAL_LOSS) is not None]
        rows.append([d.name, *[_text(config.get(s)) for s in settings], *[_text(config.get(k)) for k, _ in records],
                     str(history[-1]["epoch"]),
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
    fig.suptitle("Latent metrics by run (each run's latent sample: rows drawn from its whole store)")
    fig.tight_layout(rect=(0, 0.14 if lines else 0, 1, 1))
    return fig
