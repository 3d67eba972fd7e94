# Copyright (c) det_ext authors.
"""Shuffle-BN key encoding and the queue across 2 CPU processes (gloo)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from det_ext.pretrain.moco import MomentumContrast


class _Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return {"embedding": F.normalize(self.proj(x), dim=1), "rows": x[:, :1]}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    m = MomentumContrast(_Enc(), dim=3, queue_size=8, momentum=0.9, temperature=0.2)
    x = torch.arange(12.0).view(3, 4) + 100 * rank  # 3 samples per rank
    torch.manual_seed(10 + rank)  # different local RNG: the permutation comes from rank 0
    keys = m.encode_keys(x)
    m.enqueue(keys["embedding"])
    torch.save({"keys": keys, "queue": m.queue.clone(), "ptr": int(m.queue_ptr),
                "direct": m.encoder_k(x)}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_shuffle_bn_and_queue_across_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):  # outputs come back in input order (no BN here, so equal to direct)
        torch.testing.assert_close(r["keys"]["rows"], r["direct"]["rows"])
        torch.testing.assert_close(r["keys"]["embedding"], r["direct"]["embedding"])
        assert r["ptr"] == 6
    torch.testing.assert_close(r0["queue"], r1["queue"])  # identical queues on every process
    torch.testing.assert_close(r0["queue"][:, :6].T, torch.cat([r0["direct"]["embedding"],
                                                                r1["direct"]["embedding"]]))
