"""Latents of every store row from an exported encoder, written to a Zarr store in store order.

Ranks (under torchrun) take chunks round-robin and write whole output chunks, so no two ranks
touch one chunk; rank 0 creates the store first and marks it complete last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr
from torch import nn

from ..training import checkpoint as ckpt
from ..training.distributed import DistContext
from ..errors import KmervaeError
from ..model.vae import encoder_from_state
from ..store.contract import StoreInfo, exists, open_array, read_rows, remove

LATENTS_KEY = "kmervae_latents"


def load_encoder(path: str, device: torch.device) -> nn.Module:
    """An Encoder (or a per-scale BlockEncoder) rebuilt from an exported state dict (its shapes
    give the architecture)."""
    if not Path(path).is_file():
        raise KmervaeError(f"{path}: no such checkpoint")
    try:
        state = ckpt.load(Path(path), device)
        enc = encoder_from_state(state).to(device)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise KmervaeError(f"{path}: not an exported encoder state dict ({type(e).__name__})") from None
    enc.load_state_dict(state)
    return enc.eval()


def prepare_output(out: str, info: StoreInfo, latent: int, log_var: bool, overwrite: bool) -> None:
    if exists(out):
        if not overwrite:
            raise KmervaeError(f"{out}: already exists; pass --overwrite to replace it")
        remove(out)
    group = zarr.open_group(store=out, mode="w")
    names = ["z_mean"] + (["z_log_var"] if log_var else [])
    for name in names:
        group.create_array(name, shape=(info.rows, latent), chunks=(info.chunk_rows, latent), dtype="float32",
                           compressors=[zarr.codecs.ZstdCodec(level=1)], fill_value=0)
    group.attrs[LATENTS_KEY] = {"store": info.url, "rows": info.rows, "arrays": names, "complete": False}


@torch.no_grad()
def encode_chunks(encoder: nn.Module, info: StoreInfo, out: str, ctx: DistContext, log_var: bool,
                  progress: Callable[[int], None]) -> int:
    """Encode this rank's chunks; return the rows written."""
    clr = open_array(info.url)
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
