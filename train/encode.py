"""python -m train.encode --checkpoint RUN/vae_multi_encoder_best.pt --data STORE --out latents.zarr:
z_mean (and on request z_log_var) of every store row, in store order; also under torchrun."""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.distributed as dist

from kmervae_core.cli_help import DefaultsHelp
from kmervae_core.evaluation.encode import (encode_chunks, finish_output, load_encoder, prepare_output, refuse_existing,
                                            refuse_other_clr)
from kmervae_core.distributed import FailureAgreement, init_distributed, shutdown
from kmervae_core.errors import KmervaeError
from kmervae_core.progress import Progress
from kmervae_core.outputs import writing
from kmervae_core.run_lock import RunLock
from kmervae_core.store.contract import is_local, open_store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.encode", description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--checkpoint", required=True, help="an exported encoder (vae_multi_encoder_*.pt)")
    p.add_argument("--data", default="Data/kmers.zarr", help="the kmervae store to encode")
    p.add_argument("--out", required=True, help="the latents store to write (Zarr v3)")
    p.add_argument("--log-var", action="store_true", help="also write z_log_var")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    ctx = init_distributed()
    agreement = FailureAgreement(ctx)  # a refusal on any rank ends every rank alike
    clean, lock = False, None
    try:
        info = open_store(args.data)
        encoder = load_encoder(args.checkpoint, ctx.device)
        refuse_other_clr(args.checkpoint, info)
        refuse_existing(args.out, args.overwrite)  # on every rank, before rank 0 makes it
        if ctx.is_main and is_local(args.out):  # one encode per --out: one that --overwrite would cut short is refused
            lock = RunLock(args.out, "encode", beside=True)
            if lock.note:
                print(lock.note, flush=True)
        if ctx.active:
            dist.barrier()
        if ctx.is_main:
            with writing(args.out):
                prepare_output(args.out, info, encoder, args.log_var, args.overwrite)
        if ctx.active:
            dist.barrier()
        start = time.perf_counter()
        bar = Progress(-(-info.rows // ctx.world_size), "encode", quiet=not ctx.is_main)
        with writing(args.out):  # a full disk: one line, the store left incomplete
            written = torch.tensor([encode_chunks(encoder, info, args.out, ctx, args.log_var, bar.update)])
        bar.close()
        if ctx.active:
            dist.all_reduce(written)
        if int(written) != info.rows:
            raise KmervaeError(f"wrote {int(written)} rows of {info.rows}; {args.out} left incomplete")
        if ctx.is_main:
            finish_output(args.out)
            print(f"wrote {args.out}: z_mean {info.rows:,} x {encoder.latent}"
                  f"{' and z_log_var' if args.log_var else ''} in {time.perf_counter() - start:.1f} s")
        clean = True
        return 0
    except KmervaeError as e:
        where = f"rank {ctx.rank}: " if ctx.active else ""
        return agreement.fail(2, f"train.encode: error: {where}{e}")
    finally:
        if lock is not None:
            lock.release()
        agreement.close()
        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
