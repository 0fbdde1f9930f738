"""A run report from RUN_DIR/history.json and heldout_latents.npz: PNG figures and a Markdown page."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import KmervaeError
from ..store.kmers import KMER_GROUPS
from ..summary import history_key, mse_key


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def projection_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal components of the latents (centred SVD)."""
    centred = np.asarray(z, dtype=np.float64) - np.asarray(z, dtype=np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def write_report(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/report/*.png and report.md; return the files written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KmervaeError("the report needs matplotlib: pip install 'kmervae[report]' (or matplotlib)") from None
    history_path = run_dir / "history.json"
    if not history_path.is_file():
        raise KmervaeError(f"{run_dir}: no history.json (not a training run folder, or no epoch finished yet)")
    history = json.loads(history_path.read_text())
    if not history:
        raise KmervaeError(f"{history_path}: no epochs recorded")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written: list[Path] = []

    def figure(name: str, title: str, curves: list[tuple[str, str]], ylabel: str, log: bool = False) -> None:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in curves:
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    split = "val" if any(history_key("val", "mse") in h for h in history) else "train"
    figure("losses.png", "Losses", [(history_key("train", "recon"), "train reconstruction"),
                                    (history_key("val", "recon"), "validation reconstruction"),
                                    (history_key("train", "kl"), "train KL"), (history_key("val", "loss"), "validation loss")],
           "per row", log=True)
    figure("kmer_mse.png", f"Per-k-mer MSE ({'validation' if split == 'val' else 'train'})",
           [(history_key(split, mse_key(g.k)), f"{g.k}-mer") for g in KMER_GROUPS] + [(history_key(split, "mse"), "all")],
           "MSE")
    figure("beta_lr.png", "β and learning rate", [("beta", "β"), ("lr", "learning rate")], "value", log=True)
    figure("latent.png", "Embedding quality (held-out sample)",
           [(history_key("latent", "spearman"), "latent/input distance Spearman"),
            (history_key("latent", "knn"), "kNN accuracy (k=5)")], "value")
    if any(h.get(history_key("latent", "active_units")) is not None for h in history):
        figure("active_units.png", "Active latent units (variance > 0.01)",
               [(history_key("latent", "active_units"), "active units")], "units")

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
