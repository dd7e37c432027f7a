"""torch.distributed plumbing: who am I, the process group, collectives, local launch."""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from dmlt_trainer.config import DistConfig, RunConfig


@dataclass(frozen=True, slots=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env)


def resolve_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return requested


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU quota in cores (cgroup v2 or v1), or None when unlimited."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        for v1 in (root / "cpu", root / "cpu,cpuacct"):
            quota_file = v1 / "cpu.cfs_quota_us"
            if quota_file.is_file():
                quota = int(quota_file.read_text())
                return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a container CPU limit."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, int(limit)))
    return cores


def default_threads(local_world_size: int) -> int:
    """Torch threads per rank: the cores shared out among this machine's local ranks."""
    return max(1, available_cores() // max(1, local_world_size))


def init_from_env(cfg: DistConfig) -> DistContext:
    """Join the process group torchrun describes in the environment (or stay single)."""
    if not launched_by_torchrun():
        device = torch.device("cuda:0" if torch.cuda.is_available() and cfg.backend == "nccl" else "cpu")
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    backend = resolve_backend(cfg.backend)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    return DistContext(rank, world_size, local_rank, local_world_size, backend, device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's object on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(ctx: DistContext, value: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def gather_strided(ctx: DistContext, local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble a vector whose rank r held elements r, r+W, r+2W, … of `total`."""
    if not ctx.distributed:
        return local
    per_rank = -(-total // ctx.world_size)
    padded = torch.zeros(per_rank, dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    full = torch.empty(total, dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, total, ctx.world_size))
        full[r :: ctx.world_size] = part[:count]
    return full


def sync_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def launch_local(cfg: RunConfig) -> None:
    """Run cfg on cfg.dist.world_size local ranks through torch's elastic launcher.

    This is the code path torchrun takes in a Pod: each rank runs `dmlt_trainer.cli`
    with the resolved config and finds RANK/WORLD_SIZE in its environment.
    """
    from torch.distributed.run import get_args_parser, run

    with tempfile.TemporaryDirectory(prefix="dmlt-launch-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        threads = cfg.train.threads or default_threads(cfg.dist.world_size)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        args = get_args_parser().parse_args(
            [
                "--standalone",
                "--nnodes=1",
                f"--nproc-per-node={cfg.dist.world_size}",
                "--max-restarts=0",
                "--monitor-interval=0.5",
                "-m",
                "dmlt_trainer.cli",
                "--config",
                str(config_path),
                "--threads",
                str(threads),
            ]
        )
        run(args)
