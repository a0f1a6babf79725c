"""Data-parallel training over a training job's hosts (TrainingInstanceCount > 1), as SageMaker runs them.

Every host runs the script; the hosts come from SM_HOSTS / SM_CURRENT_HOST (from resourceconfig.json), and
the PyTorch image's toolkit exports MASTER_ADDR (the first host) and MASTER_PORT (7777). On CPU instances
SageMaker offers no distribution launcher (torch_distributed is for GPU and Trainium), so the script joins a
gloo process group itself. Each global batch is the one a single host would draw, split across the hosts, and
DistributedDataParallel averages the gradients: two hosts take the same optimisation path as one. Only the
leader (the first host) writes the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_PORT = "7777"  # sagemaker_pytorch_container.training.MASTER_PORT


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Cluster:
        env = os.environ if environ is None else environ
        hosts = tuple(json.loads(env.get("SM_HOSTS") or '["algo-1"]'))
        current = env.get("SM_CURRENT_HOST") or hosts[0]
        if current not in hosts:
            raise ValueError(f"SM_CURRENT_HOST {current!r} is not one of SM_HOSTS {list(hosts)}")
        return cls(hosts, current)

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def start(self, environ: dict[str, str] | None = None) -> None:
        """Join the hosts' gloo group (a no-op on one host)."""
        if self.size == 1:
            return
        env = os.environ if environ is None else environ
        address = env.get("MASTER_ADDR") or self.hosts[0]
        port = env.get("MASTER_PORT") or DEFAULT_PORT
        dist.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=self.rank,
                                world_size=self.size)

    def stop(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(model) if self.size > 1 else model

    def share(self, indices: torch.Tensor) -> torch.Tensor:
        """This host's part of a global batch."""
        return indices[self.rank::self.size] if self.size > 1 else indices

    def total(self, *values: float) -> list[float]:
        """Sums over the hosts (the training loss of the global batches)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()
