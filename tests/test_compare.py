"""`python -m train.compare`: the table against hand-written run folders, CSV, the plot, errors."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import run


def fake_run(path: Path, config: dict, history: list[dict]) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"out": str(path), "epochs": 2, "lr": 1e-4, **config}))
    (path / "history.json").write_text(json.dumps(history))
    return path


def epoch(n: int, val_loss: float, knn: float, **more) -> dict:
    return {"epoch": n, "val_loss": val_loss, "val_kl": 2.5, "val_mse_6mer": 1.25, "val_mse_1mer": 0.125,
            "latent_active_units": 7, "latent_spearman": 0.5, "latent_knn": knn, **more}


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    """Two hand-written runs differing in prior and latent blocks, compared as CSV with a
    plot and as Markdown (read-only): the CSV rows, the Markdown lines and the plot."""
    d = tmp_path_factory.mktemp("compare")
    a = fake_run(d / "ref", {"prior": "normal"}, [epoch(1, 30.0, 0.5), epoch(2, 40.0, 0.75)])
    b = fake_run(d / "mog", {"prior": "mog:8", "latent_blocks": [4, 4]},
                 [epoch(1, 20.0, 0.25, val_kl_block_6=1.5), epoch(2, 10.0, 0.875, val_kl_block_6=2.0)])
    plot = d / "figs" / "latent.png"
    proc = run("train.compare", a, b, "--csv", "--plot", plot, check=True)
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    plotted = plot.read_bytes()
    md = run("train.compare", a, b, "--plot", plot, check=True).stdout.splitlines()
    return {"table": table, "plot": plotted, "md": md}


def test_compare_tabulates_only_the_settings_that_differ(compared):
    table = compared["table"]
    assert list(table[0])[:6] == ["run", "latent_blocks", "prior", "epochs run", "best val loss", "final val loss"]
    assert "lr" not in table[0] and "epochs" not in table[0]  # the same in both runs
    assert [r["run"] for r in table] == ["ref", "mog"] and [r["prior"] for r in table] == ["normal", "mog:8"]
    assert [r["latent_blocks"] for r in table] == ["", "4,4"]


def test_compare_tabulates_each_runs_outcomes(compared):
    table = compared["table"]
    assert [r["best val loss"] for r in table] == ["30", "10"] and [r["final val loss"] for r in table] == ["40", "10"]
    assert [r["kNN"] for r in table] == ["0.75", "0.875"] and table[0]["val MSE 6-mer"] == "1.25"
    assert [r["val KL block 6"] for r in table] == ["", "2"]
    assert "val MSE 5-mer" not in table[0]  # no run has it


def test_compare_plots_to_a_png_in_a_new_folder(compared):
    import matplotlib.image
    assert matplotlib.image.imread(io.BytesIO(compared["plot"])).shape[:2] == (460, 1500)


def test_the_compare_plot_labels_each_metrics_axis_and_names_every_run_once(tmp_path):
    from kmervae_core.evaluation.report import latent_figure
    runs = [fake_run(tmp_path / name, {}, [epoch(1, 3.0, 0.5), epoch(2, 2.0, 0.625)]) for name in ("a", "b", "c")]
    fig = latent_figure(runs)
    assert [ax.get_ylabel() for ax in fig.axes] == ["units", "Spearman ρ", "accuracy"]
    assert [[t.get_text() for t in legend.get_texts()] for legend in fig.legends] == [["a", "b", "c"]]
    assert not any(ax.get_legend() for ax in fig.axes)


def test_the_compare_plot_shows_every_run_where_their_values_coincide(tmp_path):
    """Two runs with the same history: each run's colour must be seen in every panel, not one
    line drawn over the other."""
    import matplotlib.image
    import numpy as np
    same = [epoch(1, 3.0, 0.5), epoch(2, 2.0, 0.625), epoch(3, 1.5, 0.75)]
    a, b = fake_run(tmp_path / "a", {}, same), fake_run(tmp_path / "b", {}, same)
    run("train.compare", a, b, "--plot", tmp_path / "p.png", check=True)
    pixels = matplotlib.image.imread(tmp_path / "p.png")[:330, :, :3]  # above the legend
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's C0 and C1
        near = (np.abs(pixels - np.array(colour) / 255).max(axis=2) < 0.05)
        columns = np.flatnonzero(near.any(axis=0))
        assert [(columns // 500 == panel).sum() > 20 for panel in range(3)] == [True] * 3, colour


def test_compare_without_plot_writes_the_figure_beside_the_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = fake_run(runs / "a", {}, [epoch(1, 3.0, 0.5)]), fake_run(runs / "b", {}, [epoch(1, 2.0, 0.5)])
    proc = run("train.compare", a, b, check=True)
    assert proc.stderr.strip() == f"wrote {runs / 'compare_latent.png'}" and (runs / "compare_latent.png").is_file()


def test_compare_writes_a_markdown_table_by_default(compared):
    md = compared["md"]
    assert md[0].startswith("| run | latent_blocks | prior |") and md[1].startswith("|---|") and md[3].startswith("| mog |")


def test_compare_refuses_a_folder_that_is_not_a_run_with_one_line(tmp_path):
    a = fake_run(tmp_path / "ref", {}, [epoch(1, 3.0, 0.5)])
    proc = run("train.compare", a, tmp_path / "nowhere", "--plot", tmp_path / "p.png")
    assert proc.returncode == 2 and proc.stderr.strip() == \
        f"train.compare: error: {tmp_path / 'nowhere'}: no config.json (not a training run folder, or no epoch finished)"


def test_the_stores_clr_is_a_record_shown_after_the_settings_not_a_setting(tmp_path):
    """config.json records the CLR of the store a run trained on (data_clr): no flag sets it."""
    a = fake_run(tmp_path / "g", {"data_clr": "global", "prior": "normal"}, [epoch(1, 3.0, 0.5)])
    b = fake_run(tmp_path / "p", {"data_clr": "per-k", "prior": "mog:2"}, [epoch(1, 2.0, 0.5)])
    table = list(csv.DictReader(io.StringIO(run("train.compare", a, b, "--csv", "--plot", tmp_path / "c.png",
                                                check=True).stdout)))
    assert list(table[0])[:4] == ["run", "prior", "store CLR", "epochs run"]
    assert [r["store CLR"] for r in table] == ["global", "per-k"] and "data_clr" not in table[0]
