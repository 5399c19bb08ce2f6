"""One decision per process: the device every stage runs on and the precision of the frozen parts.

CUDA when present, else CPU; `IAP_DEVICE=cpu` forces the CPU. Which GPU: this rank's under torchrun /
accelerate launch (`LOCAL_RANK`), else the one a task runner gave this worker process (`IAP_GPU`: the process
and local Dask runners number their workers), else the first visible one (Ray and dask-cuda workers see only
their own GPU through `CUDA_VISIBLE_DEVICES`).

As in diffusers' train_text_to_image.py, the frozen parts (UNet, VAE, English encoder, cached cross-attention
layers) are cast to the run's precision on the GPU; on the CPU they stay fp32
(half-precision matmuls there are slow or missing). The trained Chinese encoder always keeps fp32
master weights; autocast runs it in the run's precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from iap.errors import IapError

PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # of the frozen parts

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


CPU = Runtime(torch.device("cpu"), torch.float32)


def detect(precision: str = "no") -> Runtime:
    """The runtime of this process for a run in `precision` ("no", "fp16", "bf16": TrainConfig.mixed_precision)."""
    if precision not in PRECISIONS:
        raise IapError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    count = gpu_count()
    if count == 0:
        return CPU
    index = gpu_index()
    if index >= count:
        raise IapError(f"this process was given GPU {index}, but only {count} are visible (CUDA_VISIBLE_DEVICES)")
    # An explicit index: torch.device("cuda") would mean "the current device", which differs per thread.
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)  # else kernels and allocator state also land on GPU 0
    return Runtime(device, PRECISIONS[precision])


def gpu_count() -> int:
    """The GPUs this process may use (0 under `IAP_DEVICE=cpu`)."""
    if os.environ.get("IAP_DEVICE", "").lower() == "cpu" or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def gpu_index() -> int:
    """This process's GPU among the visible ones: its launcher's LOCAL_RANK, else its task runner's IAP_GPU."""
    for name in ("LOCAL_RANK", "IAP_GPU"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise IapError(f"{name}={value!r} is not a GPU index")
            return int(value)
    return 0


def place(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move a frozen module to the runtime's device and precision (once, where it is loaded). Cast only when
    needed: a model loaded in the run's dtype is just moved."""
    first = next(module.parameters(), None)
    if first is not None and first.dtype == runtime.dtype:
        return module.to(device=runtime.device)
    return module.to(device=runtime.device, dtype=runtime.dtype)
