"""The shapes CNN trained by several processes with DistributedDataParallel:

    sweep worker --program \
        train_ddp='torchrun --standalone --nproc_per_node={processes} train_ddp.py {args}'

with `requirements: {resources: {processes: 2}}` in the spec. Every rank gets the same params
and trains on its share of the data; rank 0's reports are the trial's. `trial.report` is a
collective here: every rank calls it, and when the service prunes the trial, every rank gets
sweep.Pruned at the same step. Runs on CPUs with the gloo backend, on GPUs with nccl.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from shapes import ShapesCNN, class_weights, focal_loss, macro_f1, make_data
from torch.nn.parallel import DistributedDataParallel

import sweep


def train(trial: sweep.Trial, args: argparse.Namespace, rank: int, world: int) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank
    x, y = make_data(args.n_train, seed=1)
    val_x, val_y = make_data(240, seed=2)
    x, y = x[rank::world], y[rank::world]  # this rank's share
    model = DistributedDataParallel(ShapesCNN(args.channels, args.dropout))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    weights = class_weights(y)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            loss = focal_loss(model(x[batch]), y[batch], args.focal_gamma, weights)
            optimizer.zero_grad()
            loss.backward()  # gradients are averaged across ranks here
            optimizer.step()
        model.eval()
        with torch.no_grad():
            f1 = macro_f1(model.module(val_x), val_y)
        trial.report(epoch, val_macro_f1=f1, train_loss=loss.item())  # on every rank
    trial.save_model(model.module.state_dict())  # rank 0's is kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--focal_gamma", type=float, default=2.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n_train", type=int, default=480)
    args, _ = parser.parse_known_args()
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    trial = sweep.trial()
    try:
        train(trial, args, rank, world)
    except (sweep.Pruned, sweep.Stopped) as exc:  # on every rank at the same step
        print(f"rank {rank}: {type(exc).__name__.lower()}: {exc}", flush=True)
    # No rank tears the group down while another still uses it (gloo can abort then).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
