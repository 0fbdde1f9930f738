"""Latents of every store row from an exported encoder, written to a Zarr store in store order.

Ranks (under torchrun) take chunks round-robin and write whole output chunks, so no two ranks
touch one chunk; rank 0 creates the store first and marks it complete last.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr
from torch import nn

from ..config import DATA_CLR
from ..distributed import DistContext
from ..errors import KmervaeError
from ..outputs import STORE, check_output, one_line
from ..model.vae import encoder_from_state
from ..store.contract import StoreInfo, exists, read_rows, refuse_replacing_non_store, remove
from ..store.kmers import KMER_GROUPS

LATENTS_KEY = "kmervae_latents"


def load_encoder(path: str, device: torch.device) -> nn.Module:
    """An Encoder (or a per-scale BlockEncoder) rebuilt from an exported state dict (its shapes
    give the architecture)."""
    if not Path(path).is_file():
        raise KmervaeError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)  # as every checkpoint is read
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise KmervaeError(f"{path}: not a checkpoint torch can read ({one_line(e, 120)})") from None
    if isinstance(state, dict) and ("config" in state or any(str(k).startswith("encoder.") for k in state)):
        what = "a training checkpoint" if "config" in state else "a whole-model export"
        run_dir = Path(path).parent.parent if "config" in state else Path(path).parent
        raise KmervaeError(f"{path}: {what}, not an encoder; pass its run's exported encoder, "
                           f"{run_dir / 'vae_multi_encoder_best.pt'} (or _final.pt)")
    if isinstance(state, dict) and any(str(k).split(".")[-2:-1] == ["out"] for k in state):
        encoder = Path(path).with_name(Path(path).name.replace("decoder", "encoder"))
        raise KmervaeError(f"{path}: a decoder export, not an encoder; pass the encoder exported beside it, "
                           f"{encoder if encoder != Path(path) else Path(path).parent / 'vae_multi_encoder_best.pt'}")
    try:
        enc = encoder_from_state(state).to(device)
    except Exception as e:  # noqa: BLE001 - any other file is one user-facing line
        raise KmervaeError(f"{path}: not an exported encoder (vae_multi_encoder_*.pt): its weights do not make "
                           "an encoder") from None
    enc.load_state_dict(state)
    return enc.eval()


def refuse_other_clr(checkpoint: str, info: StoreInfo) -> None:
    """An encoder fed the other CLR gives latents that look fine and mean nothing: refuse a store
    whose CLR differs from the one its run trained on (RUN/config.json, written at the run's
    last start, so a run resumed on a store of the other CLR records that one; an encoder moved
    out of its run folder, or from a run before the record, is not checked)."""
    config = Path(checkpoint).parent / "config.json"
    try:
        trained = json.loads(config.read_text()).get(DATA_CLR)
    except (OSError, ValueError, AttributeError):
        return
    if trained:
        info.require_clr(trained, f"{checkpoint} was trained on")


def refuse_existing(out: str, overwrite: bool) -> None:
    """Refuse an --out that cannot be written (outputs.check_output), or that exists unless asked
    to replace it (every rank can decide it)."""
    check_output(out, STORE)
    if exists(out) and not overwrite:
        raise KmervaeError(f"{out}: already exists; pass --overwrite to replace it")
    if exists(out):
        refuse_replacing_non_store(out)


def latent_layout(encoder: nn.Module) -> list[dict]:
    """z_mean's column blocks, in order: each block's latent columns [start, stop) and the k-mer
    sizes it encodes (one block for the reference encoder, one per scale for a per-scale one)."""
    columns = encoder.columns.cpu().numpy()
    parts = [(b.latent, columns[b.columns.cpu().numpy()]) for b in encoder.blocks] if hasattr(encoder, "blocks") \
        else [(encoder.latent, columns)]
    layout, start = [], 0
    for size, cols in parts:
        ks = [g.k for g in KMER_GROUPS if ((cols >= g.local.start) & (cols < g.local.stop)).any()]
        layout.append({"z": [start, start + size], "k": ks})
        start += size
    return layout


def prepare_output(out: str, info: StoreInfo, encoder: nn.Module, log_var: bool, overwrite: bool) -> None:
    refuse_existing(out, overwrite)
    latent = encoder.latent
    if exists(out):
        remove(out)
    group = zarr.open_group(store=out, mode="w")
    names = ["z_mean"] + (["z_log_var"] if log_var else [])
    for name in names:
        group.create_array(name, shape=(info.rows, latent), chunks=(info.chunk_rows, latent), dtype="float32",
                           compressors=[zarr.codecs.ZstdCodec(level=1)], fill_value=0)
    group.attrs[LATENTS_KEY] = {"store": info.url, "rows": info.rows, "arrays": names,
                                "latent_blocks": latent_layout(encoder), "complete": False}


@torch.no_grad()
def encode_chunks(encoder: nn.Module, info: StoreInfo, out: str, ctx: DistContext, log_var: bool,
                  progress: Callable[[int], None]) -> int:
    """Encode this rank's chunks; return the rows written."""
    clr = info.clr_array
    group = zarr.open_group(store=out, mode="r+")
    written = 0
    for chunk in range(ctx.rank, info.n_chunks, ctx.world_size):
        r0, r1 = chunk * info.chunk_rows, min(info.rows, (chunk + 1) * info.chunk_rows)
        x = torch.from_numpy(np.asarray(read_rows(info.url, clr, slice(r0, r1)), dtype=np.float32)).to(ctx.device)
        if len(encoder.columns) != x.shape[1]:  # an encoder trained on some k groups
            x = x.index_select(1, encoder.columns)
        mu, lv = encoder(x)
        group["z_mean"][r0:r1] = mu.float().cpu().numpy()
        if log_var:
            group["z_log_var"][r0:r1] = lv.float().cpu().numpy()
        written += r1 - r0
        progress(r1 - r0)
    return written


def finish_output(out: str) -> None:
    group = zarr.open_group(store=out, mode="r+")
    group.attrs[LATENTS_KEY] = {**group.attrs[LATENTS_KEY], "complete": True}
