"""Two real training processes (gloo on the CPU, DistributedDataParallel) against one process.

DDP averages the processes' gradients, so one synchronised update must equal one update of a
single process whose loss is the mean loss over the union of the two batches (each half with
the sampling noise its own process drew). Two updates are compared, so Adam's moments matter:
Adam's first step alone is nearly sign(gradient) and would hide a summed gradient.
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from world_model import distributed
from world_model.config import TrainConfig
from world_model.distributed import Distributed
from world_model.train import WorldModelTrainer

from .helpers import random_batch, tiny_model

CONFIG = TrainConfig(lr=1e-3, grad_clip=1000.0)
UPDATES = 2


def batches(rank: int) -> list[dict[str, torch.Tensor]]:
    return [random_batch(3, 8, seed=10 * k + rank) for k in range(UPDATES)]


def generator(rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + rank)


def worker(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = Distributed(rank, 2, rank)
    distributed.init(ctx, torch.device("cpu"))
    try:
        # Rank 1 starts from other weights: DDP must broadcast rank 0's.
        wm = tiny_model()
        if rank == 1:
            with torch.no_grad():
                for p in wm.parameters():
                    p.add_(0.1)
        trainer = WorldModelTrainer(wm, CONFIG, dist=ctx)
        gen = generator(rank)
        losses = [trainer.update(b, gen)[0]["loss"] for b in batches(rank)]
        tensors = {f"param.{n}": p.detach() for n, p in wm.named_parameters()}
        tensors |= {f"grad.{n}": p.grad for n, p in wm.named_parameters()}
        tensors["losses"] = torch.tensor(losses)
        save_file(tensors, f"{out}/rank{rank}.safetensors")
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_reference():
    wm = tiny_model()
    opt = torch.optim.Adam(wm.parameters(), CONFIG.lr, eps=CONFIG.eps)
    gens = [generator(0), generator(1)]
    per_rank = [batches(0), batches(1)]
    losses = []
    for k in range(UPDATES):
        halves = [wm.loss(per_rank[r][k], generator=gens[r])[0] for r in (0, 1)]
        loss = (halves[0] + halves[1]) / 2  # mean over the union (equal halves)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), CONFIG.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return wm, losses


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_take_the_update_of_one_on_both_batches(tmp_path):
    mp.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True
    )
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    reference, ref_losses = single_process_reference()
    for name, p in reference.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r[f"param.{name}"], p.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(r[f"grad.{name}"], p.grad, rtol=1e-4, atol=1e-6)
    # The logged loss is the mean over the processes: the union's.
    for r in ranks:
        torch.testing.assert_close(r["losses"], torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)

    # And the comparison can fail: one process on its own batch alone ends elsewhere.
    alone = tiny_model()
    trainer = WorldModelTrainer(alone, CONFIG)
    gen = generator(0)
    for b in batches(0):
        trainer.update(b, gen)
    assert any(
        not torch.allclose(p, q.detach(), atol=1e-6)
        for p, q in zip(alone.parameters(), reference.parameters())
    )
