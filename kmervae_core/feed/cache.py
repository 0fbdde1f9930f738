"""Which tier keeps a rank's rows (`--cache auto|device|host|none`).

The epoch plan gives a rank the same rows in every epoch (fixed partitions), so the stream can
keep every chunk of its share once read (KmerStream's `keep`: the same slab the stream gathers
from, never freed): on the GPU (the `device` tier), in pinned host memory (`host`), or not at all
(`none`: a rolling window of chunks, every epoch decodes again). The batches are the stream's
either way, so a run's losses do not depend on the tier. This module only chooses the tier.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import CACHE_TIERS
from ..limits import gib, host_memory


@dataclass(frozen=True)
class Residency:
    """The tier a rank uses and the line that says why."""

    tier: str
    message: str


def choose_tier(requested: str, need: int, device: torch.device, fraction: float, ranks_per_host: int = 1,
                device_free: int | None = None, host_free: tuple[int, str] | None = None,
                stream_bytes: int = 0) -> Residency:
    """Pick the highest tier allowed by `requested` whose budget holds `need` bytes: the device
    tier within `fraction` of the GPU's free memory; the host tier within `fraction` of what
    this host can still give (host_free: bytes and where the figure comes from; by default the
    smaller of MemAvailable and the job's cgroup allowance) shared by this host's ranks, less
    `stream_bytes` that this rank's streams take without a cache (their rolling slabs). Where the request
    cannot be met, the result is the next tier down and its message says why."""
    if requested not in CACHE_TIERS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_TIERS)}, got {requested!r}")
    if requested == "none":
        return Residency("none", "cache: off (--cache none); every epoch streams from the store")
    reasons = []
    if requested in ("auto", "device"):
        if device.type != "cuda":
            if requested == "device":
                reasons.append("no CUDA device for the device tier")
        else:
            free, short = gpu_budget(need, device, fraction, device_free)
            if not short:
                return Residency("device", f"cache: device tier, {gib(need)} on {device} "
                                                 f"(budget {fraction:g} x {gib(free)} free)")
            reasons.append(short)
    host, source = host_memory() if host_free is None else host_free
    share = host / max(1, ranks_per_host) - stream_bytes
    where = (f"{fraction:g} x ({source}" + (f" / {ranks_per_host} ranks" if ranks_per_host > 1 else "")
             + (f" - {gib(stream_bytes)} for the stream's slabs" if stream_bytes else "") + ")")
    why = "; ".join(reasons)
    if need <= fraction * share:
        pinned = " pinned" if device.type == "cuda" else ""
        return Residency("host", f"cache: host tier,{pinned} {gib(need)} (budget {where})"
                                       + (f" [{why}]" if why else ""))
    reasons.append(f"{gib(need)} does not fit {where}")
    if share <= 0:
        reasons.append("the stream's slabs alone may not fit: fewer --workers (less read-ahead)")
    return Residency("none", f"cache: none, every epoch streams from the store [{'; '.join(reasons)}]")


def gpu_budget(need: int, device: torch.device, fraction: float, device_free: int | None = None) -> tuple[int, str]:
    """(the GPU's free bytes, "" where `need` bytes fit `fraction` of them, else the line that
    says they do not): the one GPU budget of the cache and the rolling slab."""
    free = torch.cuda.mem_get_info(device)[0] if device_free is None else device_free
    return free, "" if need <= fraction * free else f"{gib(need)} does not fit {fraction:g} x {gib(free)} free on {device}"


def rolling_storage(device: torch.device, device_bytes: int, fraction: float,
                    device_free: int | None = None) -> tuple[torch.device, str]:
    """Where a rank's rolling slab goes where nothing is kept: on the GPU where its `device_bytes`
    fit `fraction` of the free memory, else in pinned host memory (batches gathered there and
    copied over), with the line that says why ("" on the GPU)."""
    if device.type != "cuda" or not device_bytes:
        return device, ""
    short = gpu_budget(device_bytes, device, fraction, device_free)[1]
    if not short:
        return device, ""
    return torch.device("cpu"), f"the rolling slab: {short}: it is in pinned host memory, batches are copied over"
