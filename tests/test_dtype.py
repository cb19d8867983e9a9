"""dtype `auto`: bf16 where the hardware multiplies bf16 natively, fp32 elsewhere; training follows the model entry."""
from __future__ import annotations

import torch

from pausetune.core.models import cpu_native_bf16, torch_dtype

ZEN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512vl\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_native_bf16_from_cpu_flags():
    assert cpu_native_bf16(ZEN) and cpu_native_bf16(SAPPHIRE)
    assert not cpu_native_bf16(OLD) and not cpu_native_bf16("")


def test_auto_resolves_per_device():
    assert torch_dtype("auto", "cuda") == torch.bfloat16
    assert torch_dtype("auto", "cpu") == (torch.bfloat16 if cpu_native_bf16() else torch.float32)
    assert torch_dtype("float32", "cuda") == torch.float32 and torch_dtype("bfloat16", "cpu") == torch.bfloat16


def test_cells_record_their_kernel_family():
    from pausetune.stages.eval import kernels

    k = kernels("cpu")
    assert k["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and k["native_bf16"] == cpu_native_bf16()
