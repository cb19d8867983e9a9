"""dtype `auto`: bf16 where the hardware multiplies bf16 natively, fp32 elsewhere; training follows the model entry."""
from __future__ import annotations

import torch

from pausetune.core.kernels import cpu_native_bf16, torch_dtype

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
    from pausetune.core.kernels import cell_kernels

    k = cell_kernels("cpu")
    assert k["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and k["native_bf16"] == cpu_native_bf16()


def test_fp32_linear_choice_is_measured_once_and_kept(tmp_path, monkeypatch):
    """The fp32 linear route is probed once per machine, per input-size class (one row, a few, prefill-sized), and
    read back after (stable cell identity); the env variable forces a path for all classes."""
    from pausetune.core.kernels import LINEAR_CLASSES, LINEAR_PROBE_VERSION, fp32_linear_kernels

    monkeypatch.delenv("PAUSETUNE_FP32_LINEAR", raising=False)
    first = fp32_linear_kernels(tmp_path)
    files = list((tmp_path / "kernels").glob("fp32_linear_*.json"))
    assert list(LINEAR_CLASSES) == ["decode1", "decode", "prefill"]
    assert len(files) == 1 and {first[k] for k in LINEAR_CLASSES} <= {"mkl", "onednn"}
    import json

    rec = json.loads(files[0].read_text())
    assert rec["version"] == LINEAR_PROBE_VERSION == 2 and rec["threads"] == torch.get_num_threads()
    assert all(rec[f"{k}_onednn_over_mkl"] > 0 and rec[k] == first[k] for k in LINEAR_CLASSES)
    forged = rec | {"prefill": "onednn" if rec["prefill"] == "mkl" else "mkl",
                    "decode1": "onednn" if rec["decode1"] == "mkl" else "mkl"}  # the file, not a new probe, decides
    files[0].write_text(json.dumps(forged))
    again = fp32_linear_kernels(tmp_path)
    assert again["prefill"] == forged["prefill"] and again["decode1"] == forged["decode1"]
    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "onednn")
    assert {fp32_linear_kernels(tmp_path)[k] for k in LINEAR_CLASSES} == {"onednn"}


def test_fp32_linear_probe_reads_and_upgrades_a_version_1_file(tmp_path, monkeypatch):
    """A probe file from before the one-row class (prefill and decode only) keeps its two choices (no re-probe,
    so the cells' identity holds); only the one-row class is measured and added, and the file says version 2."""
    import json

    from pausetune.core.kernels import fp32_linear_kernels

    monkeypatch.delenv("PAUSETUNE_FP32_LINEAR", raising=False)
    fp32_linear_kernels(tmp_path)
    path = next((tmp_path / "kernels").glob("fp32_linear_*.json"))
    rec = json.loads(path.read_text())
    v1 = {k: rec[k] for k in ("cpu", "threads", "torch")} | {"prefill": "onednn", "decode": "onednn",
                                                               "prefill_onednn_over_mkl": 9.0,
                                                               "decode_onednn_over_mkl": 9.0}
    path.write_text(json.dumps(v1))
    got = fp32_linear_kernels(tmp_path)
    assert got["prefill"] == got["decode"] == "onednn" and got["decode1"] in ("mkl", "onednn")
    up = json.loads(path.read_text())
    assert up["version"] == 2 and up["decode1"] == got["decode1"] and up["decode1_onednn_over_mkl"] > 0
    assert up["prefill_onednn_over_mkl"] == up["decode_onednn_over_mkl"] == 9.0  # kept, not re-measured


def test_linear_route_record_says_exactly_which_route_runs():
    """The cell record per size class, read back the way the engine reads it: one row takes 'decode1' where the
    record has it, else the 'decode' route (version-1 records, and records where the two agree)."""
    from pausetune.core.kernels import linear_route, linear_route_record

    for d1 in ("mkl", "onednn"):
        for d in ("mkl", "onednn"):
            route = {"prefill": "mkl", "decode": d, "decode1": d1}
            rec = linear_route_record(route)
            assert ("decode1" in rec) == (d1 != d)
            assert [linear_route(rec, n) for n in (1, 2, 15, 16, 512)] == [d1, d, d, "mkl", "mkl"]
    assert linear_route({"prefill": "mkl", "decode": "onednn"}, 1) == "onednn"  # a version-1 record


def test_fp32_cells_record_the_linear_route(monkeypatch):
    from pausetune.core.kernels import cell_kernels

    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "onednn")
    assert cell_kernels("cpu", "float32")["linear_fp32"] == {"prefill": "onednn", "decode": "onednn"}
    monkeypatch.setenv("PAUSETUNE_FP32_LINEAR", "mkl")
    assert cell_kernels("cpu", "float32")["linear_fp32"] == {"prefill": "mkl", "decode": "mkl"}
    assert "linear_fp32" not in cell_kernels("cpu", "bfloat16")  # bf16 GEMMs go to oneDNN whatever the route
    # a machine whose one-row inputs take another route than 2-15 rows: the cell says so (and the engine runs it)
    import pausetune.core.kernels as kernels_module

    monkeypatch.setattr(kernels_module, "fp32_linear_kernels",
                        lambda: {"prefill": "mkl", "decode": "onednn", "decode1": "mkl", "source": "probe"})
    assert cell_kernels("cpu", "float32")["linear_fp32"] == {"prefill": "mkl", "decode": "onednn", "decode1": "mkl"}


def test_autocast_only_over_fp32_weights_where_bf16_is_native():
    from pausetune.core.kernels import autocast_dtype

    assert autocast_dtype("auto", "float32", "cuda") == "bfloat16" and autocast_dtype("auto", "bfloat16", "cuda") is None
    assert autocast_dtype("auto", "float32", "cpu") == ("bfloat16" if cpu_native_bf16() else None)
    assert autocast_dtype("bfloat16", "float32", "cpu") == "bfloat16" and autocast_dtype("none", "float32", "cuda") is None


def test_attention_path_per_call():
    """The engine's attention takes the split lower-right path only for unpadded chunks on a cache; the trunk prefill
    (q == kv), single decode steps and masked calls stay on the stock function, as `model.generate` runs them."""
    from pausetune.core.kernels import STOCK_ATTENTION, attention_path

    assert attention_path("cpu", 64, 192, False, 0.0, False) == "split_cpu"
    assert attention_path("cuda", 64, 192, False, 0.0, False) == "lower_right"
    assert attention_path("cpu", 1, 192, False, 0.0, True) == "rows"  # a batched decode step, row by row
    for call in [(64, 64, False, 0.0, False), (1, 192, False, 0.0, False), (64, 192, True, 0.0, False),
                 (64, 192, False, 0.1, False)]:
        assert attention_path("cpu", *call) == attention_path("cuda", *call) == STOCK_ATTENTION
