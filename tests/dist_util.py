"""Spawning gloo (or NCCL) process groups for the tests: each run gets a
fresh rendezvous file in a fresh temporary directory (no port to race for),
a timeout on every collective, and a wall-clock limit on the whole run, so a
distributed test fails instead of hanging."""
from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, worker, world, init_file, result_file, backend, args):
    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        out = worker(rank, world, *args)
        dist.destroy_process_group()
    except Exception:
        out = {"error": traceback.format_exc()}
    torch.save(out, f"{result_file}.{rank}")


def spawn(worker, world: int, *args, backend: str = "gloo", timeout: float = 240.0) -> list:
    """Run ``worker(rank, world, *args)`` in ``world`` fresh processes of one
    process group; returns each rank's return value. Raises if a rank fails
    or the run exceeds ``timeout`` seconds (the processes are then killed)."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        ctx = mp.start_processes(_entry, args=(worker, world, init_file, result, backend, args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"{worker.__name__}: world {world} ran past {timeout:g} s")
        outs = [torch.load(f"{result}.{rank}", weights_only=False) for rank in range(world)]
    errors = [f"rank {rank} failed:\n{out['error']}" for rank, out in enumerate(outs)
              if isinstance(out, dict) and "error" in out]
    if errors:
        raise AssertionError("\n".join(errors))
    return outs
