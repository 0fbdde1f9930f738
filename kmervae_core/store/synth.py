"""A realistic small all_kmers.npy: contigs cut from simulated genomes, k-mers really counted.

Each genome is a Markov chain of order 4 whose transition probabilities are drawn around
its own base composition (GC content spread across genomes), so genomes differ in their
k-mer spectra as real ones do. Contigs of 1 to 20 kb (log-uniform) are sampled from genomes
of uneven abundance; canonical k-mers are counted for k = 7..1 and normalised per k; column
0 is the contig length. Deterministic for a seed.
"""
from __future__ import annotations


import numpy as np

from ..atomic import atomic_file
from .kmers import SOURCE_COLUMNS, SOURCE_KS, canonical_count, canonical_index

ORDER = 4
SAMPLE_BATCH = 4096  # contigs sampled together (one Python step per base position)
COUNT_BATCH = 256  # contigs counted together (bounds the k-mer code arrays)


def genome_models(genomes: int, rng: np.random.Generator, concentration: float = 10.0) -> np.ndarray:
    """Cumulative transition probabilities, shape (genomes, 4^ORDER contexts, 3)."""
    gc = np.linspace(0.3, 0.7, genomes) + rng.uniform(-0.02, 0.02, genomes)
    rng.shuffle(gc)
    models = np.empty((genomes, 4**ORDER, 3))
    for g in range(genomes):
        comp = np.array([(1 - gc[g]) / 2, gc[g] / 2, gc[g] / 2, (1 - gc[g]) / 2])
        probs = rng.dirichlet(concentration * 4 * comp, size=4**ORDER)
        models[g] = np.cumsum(probs, axis=1)[:, :3]
    return models


def sample_contigs(models: np.ndarray, genome: np.ndarray, length: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Bases (0..3) of contigs, shape (n, max length); positions past a contig's length are junk."""
    n, steps = len(genome), int(length.max())
    seq = np.empty((n, steps), dtype=np.uint8)
    ctx = rng.integers(0, 4**ORDER, n)
    for t in range(steps):
        cum = models[genome, ctx]
        u = rng.random(n)
        base = (u > cum[:, 0]).astype(np.uint8) + (u > cum[:, 1]) + (u > cum[:, 2])
        seq[:, t] = base
        ctx = ((ctx << 2) | base) & (4**ORDER - 1)
    return seq


def count_kmers(seq: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Rows of all_kmers.npy (float32, 10,965 columns) for contigs given as base codes."""
    n = len(seq)
    out = np.zeros((n, SOURCE_COLUMNS), dtype=np.float32)
    out[:, 0] = length
    codes = seq.astype(np.int32)
    starts = {}
    col = 1
    for k in SOURCE_KS:
        starts[k] = col
        col += canonical_count(k)
    for k in range(1, max(SOURCE_KS) + 1):
        if k > 1:
            codes = (codes[:, :-1] << 2) | seq[:, k - 1:]
        ncan = canonical_count(k)
        valid = np.arange(codes.shape[1])[None, :] <= (length[:, None] - k)
        flat = canonical_index(k)[codes] + (np.arange(n, dtype=np.int64) * ncan)[:, None]
        counts = np.bincount(flat[valid], minlength=n * ncan).reshape(n, ncan)
        out[:, starts[k]:starts[k] + ncan] = counts / np.maximum(length - k + 1, 1)[:, None]
    return out


def write_sample(path: str, rows: int, seed: int = 0, genomes: int = 10,
                 min_length: int = 1000, max_length: int = 20000) -> np.ndarray:
    """Write a synthetic all_kmers.npy at path (atomically) and return the genome label per row."""
    rng = np.random.default_rng(seed)
    models = genome_models(genomes, rng)
    abundance = rng.dirichlet(np.full(genomes, 2.0))
    labels = rng.choice(genomes, size=rows, p=abundance)
    lengths = np.exp(rng.uniform(np.log(min_length), np.log(max_length), rows)).astype(np.int64)
    with atomic_file(path) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, SOURCE_COLUMNS)})
        for s in range(0, rows, SAMPLE_BATCH):
            e = min(rows, s + SAMPLE_BATCH)
            seq = sample_contigs(models, labels[s:e], lengths[s:e], rng)
            for c in range(0, e - s, COUNT_BATCH):
                part = slice(c, min(e - s, c + COUNT_BATCH))
                f.write(count_kmers(seq[part], lengths[s:e][part]).astype("<f4").tobytes())
    return labels
