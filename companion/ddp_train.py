"""Data-parallel training of a small MLP on MNIST-5k, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 companion/ddp_train.py --steps 20 --out result.json

torchrun starts one process per "rank" and gives each its identity in environment
variables: ``RANK`` (0 .. WORLD_SIZE-1 over all machines), ``LOCAL_RANK`` (its index on
this machine, which picks its GPU) and ``WORLD_SIZE``, plus the address of the
rendezvous. Every rank builds the same model; ``DistributedDataParallel`` copies rank 0's
weights to the others at the start and, during ``backward``, averages the gradients
over all ranks (an all-reduce), so every optimizer step is identical everywhere.
``DistributedSampler`` hands each rank a different share of every epoch.

On the CPU the backend is Gloo. On GPUs it would be NCCL, with one GPU per rank:
``torch.cuda.set_device(LOCAL_RANK)``, the model and batches on that device and
``DistributedDataParallel(model, device_ids=[LOCAL_RANK])``; ``--backend auto`` does so.

Rank 0 writes a small JSON result: the per-step losses (averaged over ranks), the test
accuracy, and a SHA-256 of every rank's final weights, which must all be equal.
"""
from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes, in order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank (the global batch is this x WORLD_SIZE)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="gloo")
    parser.add_argument("--out", type=Path, default=Path("ddp_result.json"))
    args = parser.parse_args(argv)
    faulthandler.enable()  # a rank killed by a signal (e.g. SIGABRT from C++) prints where it was

    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # one GPU per process, picked by its local rank
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group(backend)
    start = time.perf_counter()

    from companion import data, deploy  # light imports; the data come from the checksummed cache

    if rank != 0:
        dist.barrier()  # let rank 0 build the cache first if it is missing
    splits = data.split(data.load_mnist5k())
    if rank == 0:
        dist.barrier()
    X, y = splits.tensors("train")
    sampler = DistributedSampler(TensorDataset(X, y), num_replicas=world, rank=rank, shuffle=True, seed=0,
                                 drop_last=True)
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch_size, sampler=sampler, drop_last=True)

    torch.manual_seed(0)
    model = deploy.mlp((784, 128, 10), dropout=0.0).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if backend == "nccl" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)

    losses, step, epoch = [], 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)  # sum over ranks, for the log only
            losses.append(mean_loss.item() / world)
            step += 1
            if step == args.steps:
                break
        epoch += 1

    digests = [None] * world
    dist.all_gather_object(digests, weights_digest(model))
    if rank == 0:
        X_test, y_test = splits.tensors("test", device=device)
        model.eval()
        with torch.no_grad():
            acc = (model(X_test).argmax(1) == y_test).float().mean().item()
        result = {"backend": backend, "world_size": world, "steps": step, "batch_per_rank": args.batch_size,
                  "global_batch": args.batch_size * world, "samples_per_rank_per_epoch": len(sampler),
                  "losses": losses, "test_acc": acc, "weights_sha256": digests,
                  "seconds": time.perf_counter() - start}
        args.out.write_text(json.dumps(result, indent=1))
    dist.barrier()  # the other ranks wait for rank 0 before leaving: no rank tears down while another still talks
    dist.destroy_process_group()


def exit_without_finalizing() -> None:
    """End the process now, skipping the interpreter's shutdown (the training is over).

    Gloo's worker threads drop their last reference to a finished collective (its tensors are
    Python objects) on their own schedule, which can fall after ``destroy_process_group`` and
    ``main`` have returned. If that happens while Python is finalizing, the thread cannot take
    the GIL, Python ends it with ``pthread_exit``, the C++ runtime calls ``std::terminate``, and
    the rank dies with SIGABRT ("terminate called without an active exception"): 3 runs in 60
    on a loaded 2-core machine, 1 in 105 unloaded (seen with gdb in a core dump, PyTorch 2.13).
    ``os._exit`` skips finalization. Everything this script writes is closed by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()  # an error raises here and exits non-zero as usual
    exit_without_finalizing()
