"""`python -m train.report`'s figures say what they show: drawn from hand-written run folders and
read back from the figures' matplotlib objects (titles, labels, ticks, lines, legends)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmervae_core.evaluation import report


def epoch(n: int, knn: float | None = 0.5, best: bool = False) -> dict:
    """One history.json record; losses fall within one decade (11,500-19,000), as a real run's do."""
    loss = 11500 + 7500 / n
    return {"epoch": n, "best": best, "beta": 0.1, "lr": 1e-4, "train_loss": loss, "val_loss": loss * 1.05,
            "train_recon": loss - 300, "val_recon": loss * 1.05 - 300, "train_kl": 300.0 + n, "val_kl": 310.0 + n,
            "val_mse": 4.5, "val_mse_6mer": 5.4, "latent_active_units": 8, "latent_spearman": 0.5 + n / 20,
            "latent_knn": knn}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A 5-epoch run whose best epoch is 3, with labels and the latent sample's latents."""
    history = [epoch(n, best=n in (1, 3)) for n in range(1, 6)]
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "config.json").write_text(json.dumps({"latent": 8, "latent_sample": 4, "select_by": "val_loss"}))
    write_latents(tmp_path, epoch=3)
    return tmp_path


def write_latents(run_dir: Path, **more) -> np.ndarray:
    """Four rows of latents on three orthogonal centred directions with sds 3, 2, 1: principal
    components that explain 9/14, 4/14 and 1/14 of the variance."""
    a, b, c = np.array([[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=np.float64)
    z = np.stack([3 * a, 2 * b, c], axis=1).astype(np.float32)
    np.savez(run_dir / report.SAMPLE_LATENTS, z=z, rows=np.arange(4), labels=np.array([0, 0, 1, 1]), **more)
    return z


def titles(fig) -> list[str]:
    return [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]


def test_no_figure_calls_the_latent_sample_held_out(run_dir, tmp_path):
    """The latent sample is drawn from the whole store (mostly training rows)."""
    history, config = report.read_run(run_dir)
    sample = report.sample_words(run_dir, config)
    assert sample == "latent sample: 4 rows drawn from the whole store"
    figures = [report.latent_metrics_figure(history, sample), report.active_units_figure(history, config, sample),
               report.latents_pca_figure(run_dir / report.SAMPLE_LATENTS), report.latent_figure([run_dir])]
    for fig in figures:
        text = " ".join(titles(fig))
        assert "held-out" not in text.lower() and "whole store" in text, text


def test_latent_png_has_no_knn_panel_when_the_store_has_no_labels(run_dir):
    history = [epoch(n, knn=None) for n in range(1, 4)]
    fig = report.latent_metrics_figure(history, "")
    assert [ax.get_title() for ax in fig.axes] == ["Latent/input distance Spearman"]
    labelled = report.latent_metrics_figure([epoch(n) for n in range(1, 4)], "")
    assert [ax.get_title() for ax in labelled.axes] == ["Latent/input distance Spearman", "Label kNN accuracy (k=5)"]


def test_every_loss_panel_labels_ticks_where_the_curves_lie_and_marks_the_best_epoch(run_dir):
    history, config = report.read_run(run_dir)
    fig = report.losses_figure(history, config)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        shown = [t.get_loc() for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
        assert len(shown) >= 3, ax.get_title()
        train = ax.lines[0].get_ydata()  # the train curve sits below validation: a tick must reach it
        assert any(train.min() <= t <= train.max() for t in shown), (ax.get_title(), shown)
        [marker] = [line for line in ax.lines if line.get_label().startswith("best epoch")]
        assert list(marker.get_xdata()) == [3, 3] and marker.get_label() == "best epoch 3 (by val_loss)"


def test_the_pca_figure_shows_the_best_encoders_latents_with_explained_variance_and_the_legend_beside(run_dir):
    fig = report.latents_pca_figure(run_dir / report.SAMPLE_LATENTS)
    ax = fig.axes[0]
    assert "best epoch's encoder (epoch 3)" in ax.get_title()
    assert ax.get_xlabel() == f"PC1 ({9 / 14:.1%} of the variance)" and ax.get_ylabel() == f"PC2 ({4 / 14:.1%} of the variance)"
    fig.canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the points, not over them


def test_latents_written_before_they_recorded_their_epoch_are_said_to_be_the_last_epochs(run_dir):
    write_latents(run_dir)
    fig = report.latents_pca_figure(run_dir / report.SAMPLE_LATENTS)
    assert "last epoch's encoder" in fig.axes[0].get_title()


def test_active_units_has_one_title_and_its_latent_size_line_drawn_over_the_data(run_dir):
    """Every unit active (8 of 8): the data line lies on the latent size line, which stays seen."""
    history, config = report.read_run(run_dir)
    fig = report.active_units_figure(history, config, "")
    [ax] = fig.axes
    assert not fig._suptitle or not fig._suptitle.get_text()
    assert ax.get_title().count("Active latent units") == 1
    data, size = ax.lines
    assert data.get_label() == "active units" and size.get_label() == "latent size (8)"
    assert size.get_zorder() > data.get_zorder() and ax.get_ylim()[1] > 8


def test_write_report_writes_each_figure_and_the_page(run_dir):
    written = report.write_report(run_dir)
    assert [p.name for p in written] == ["losses.png", "kmer_mse.png", "beta_lr.png", "latent.png",
                                         "active_units.png", "latents_pca.png", "report.md"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written[:-1])
    assert "![latents_pca](latents_pca.png)" in written[-1].read_text()
