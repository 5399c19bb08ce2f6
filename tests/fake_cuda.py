"""A fake CUDA device on a CPU-only torch build, for placement tests.

torch's FakeTensorMode creates device="cuda" tensors without a GPU (metadata only) and raises
FakeTensorDeviceMismatchError when one meets a CPU tensor in an op: exactly the bug a GPU run would hit.
Two limits of this CPU build are worked around here, and only here:
- some Python entry points (basic indexing, expand, contiguous, ...) take a CUDA device guard that the build
  lacks. `_Guardless` retries just those: it raises itself if the op mixes CPU and CUDA tensors (as torch
  would; 0-dim CPU tensors are allowed, as in torch), else reruns it with the fake tensors tagged CPU and
  tags the outputs CUDA again;
- autograd on fake CUDA parameters aborts the process, so checks run forwards under no_grad with frozen
  parameters (the placement of a training step is decided in its forward).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from iap.system.runtime import Runtime

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


class DeviceMismatch(RuntimeError):
    pass


class _Guardless(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            return func(*args, **kwargs)
        except RuntimeError as e:
            if "not linked with support for cuda" not in str(e):
                raise
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if {t.device.type for t in tensors if t.dim() > 0} >= {"cuda", "cpu"}:
            raise DeviceMismatch(f"{getattr(func, '__name__', func)}: tensors on cuda and cpu")
        tagged = [t for t in tensors if isinstance(t, FakeTensor) and t.fake_device.type == "cuda"]
        for t in tagged:
            t.fake_device = CPU
        try:
            out = func(*args, **kwargs)
        finally:
            for t in tagged:
                t.fake_device = CUDA
        for t in tree_flatten(out)[0]:
            if tagged and isinstance(t, FakeTensor) and t.fake_device.type == "cpu":
                t.fake_device = CUDA
        return out


@contextmanager
def fake_cuda(dtype: torch.dtype = torch.bfloat16) -> Iterator[Runtime]:
    """Inside: tensors created for the returned runtime are fake CUDA tensors; real CPU tensors may flow in
    (as from disk or a data loader) and raise on contact with CUDA ones unless moved."""
    with FakeTensorMode(allow_non_fake_inputs=True), _Guardless():
        yield Runtime(CUDA, dtype)


def on_cuda(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device == CUDA
