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


def test_fp32_linear_choice_is_measured_once_and_kept(tmp_path, monkeypatch):
    """The fp32 linear route is probed once per machine and read back after (stable cell identity); the env
    variable forces a path."""
    from pausetune.core.models import fp32_linear_kernels

    monkeypatch.delenv("PAUSETUNE_FP32_LINEAR", raising=False)
    first = fp32_linear_kernels(tmp_path)
    files = list((tmp_path / "kernels").glob("fp32_linear_*.json"))
    assert len(files) == 1 and {first["prefill"], first["decode"]} <= {"mkl", "onednn"}
    import json

    rec = json.loads(files[0].read_text())
    assert rec["prefill_onednn_over_mkl"] > 0 and rec["threads"] == torch.get_num_threads()
    forged = rec | {"prefill": "onednn" if rec["prefill"] == "mkl" else "mkl"}  # the file, not a new probe, decides
    files[0].write_text(json.dumps(forged))
    assert fp32_linear_kernels(tmp_path)["prefill"] == forged["prefill"]
    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "onednn")
    assert fp32_linear_kernels(tmp_path)["prefill"] == "onednn" == fp32_linear_kernels(tmp_path)["decode"]


def test_fp32_cells_record_the_linear_route(monkeypatch):
    from pausetune.stages.eval import kernels

    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "onednn")
    assert kernels("cpu", "float32")["linear_fp32"] == {"prefill": "onednn", "decode": "onednn"}
    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "mkl")
    assert kernels("cpu", "float32")["linear_fp32"] == {"prefill": "mkl", "decode": "mkl"}
    assert "linear_fp32" not in kernels("cpu", "bfloat16")  # bf16 GEMMs go to oneDNN whatever the route
