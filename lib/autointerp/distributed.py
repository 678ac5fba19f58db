"""Sharded caching across processes or GPUs, on torchrun (PyTorch's own launcher).

    torchrun --nproc_per_node 2 -m autointerp.distributed RUN_DIR            # 2 CPU processes (gloo)
    torchrun --nproc_per_node 8 -m autointerp.distributed RUN_DIR            # 8 GPUs, one rank each (nccl)

Every rank loads the run's model (on ``cuda:LOCAL_RANK`` when the run's device is cuda), SAE and
corpus, and caches the shards ``i`` with ``i % world_size == rank`` into the same ``<run>/cache``;
rank 0 builds the index and stats once every shard is there. Shard boundaries and batches are
those of a single-process run, so the cache is byte-identical to one; a killed rank's shards are
missing and a rerun (with any number of ranks) computes only those. The SAE must exist (chapter 00
trains it; rank 0 trains it here if not, the others wait).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Rank:
    """This process's place in the launch (from torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def device(self, run_device: str) -> str:
        """``cuda:LOCAL_RANK`` for a cuda run (one GPU per rank), else the run's device."""
        return f"cuda:{self.local_rank}" if run_device.startswith("cuda") and self.world_size > 1 else run_device


def cache_run(run_dir: str, *, progress: bool | None = None):
    """Cache the run in ``run_dir`` as one rank of a torchrun launch (or alone without one)."""
    import torch
    import torch.distributed as dist

    from . import cache, config, corpus, models, saes

    me = Rank.from_env()
    cfg = config.load(run_dir)
    device = me.device(cfg.device)
    group = me.world_size > 1
    if group:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        # ranks wait at barriers while the others finish their shards and rank 0 builds the index
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=12))
    try:
        subject = models.load(cfg.model, device=device, dtype=cfg.dtype)
        packed = corpus.for_run(cfg, subject.tokenizer)
        if me.rank != 0 and group:
            dist.barrier()  # rank 0 trains the SAE first if it is not there yet
        sae, _ = saes.for_run(cfg, subject, packed.tokens, progress=False)
        if me.rank == 0 and group:
            dist.barrier()
        return cache.for_run(cfg, subject, sae, packed, progress=(me.rank == 0) if progress is None else progress,
                             rank=me.rank, world_size=me.world_size, barrier=dist.barrier if group else None)
    finally:
        if group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m autointerp.distributed",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory made by notebooks/00_setup.ipynb (its run.json)")
    args = ap.parse_args(argv)
    reader = cache_run(args.run_dir)
    if Rank.from_env().rank == 0:
        print(f"Cached {reader.manifest.n_rows} rows in {reader.manifest.n_shards} shards into {reader.dir}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
