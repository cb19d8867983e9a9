"""A model's numbers do not depend on which process computed them.

The failure this guards against (found 2026-12-04): MKL's vector math library (VML) picks its code path on a
function's first call; when torch splits the first large `cos` (the RoPE table of a model's first forward) across
two threads, the two first calls race and one thread can compute its half on another path, 1 ulp off in fp32. The
same SmolLM2 tuned cell then gave three different answer log-probs in fresh processes. It showed only with other
work just before the forward (an MKL GEMM, as a LoRA merge does, and a parquet read, as eval's haystack load does):
3 of 10 and 4 of 8 fresh processes computed another RoPE table. `core.kernels.warm_math_kernels` (run by
`load_model` and `Engine`) settles every path on one thread first.
"""
from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from pausetune.core.models import load_model
net = load_model(sys.argv[1], "bfloat16", "cpu")
(torch.randn(576, 16) @ torch.randn(16, 576)).sum()  # an fp32 MKL GEMM, as a LoRA merge does
import pyarrow.parquet as pq
pq.read_table(sys.argv[2]).to_pylist()  # a parquet read, as eval's haystack load does
digest = lambda t: hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()[:16]
rope = []
net.model.rotary_emb.register_forward_hook(lambda m, i, o: rope.append(digest(o[0]) + digest(o[1])))
torch.manual_seed(0)
ids = torch.randint(0, 40000, (1, 804))  # 804 x 64 RoPE values: split across threads
with torch.no_grad():
    logits = net(ids).logits[0, -1]
print(rope[0], digest(logits))
"""


def first_forward(model_dir, parquet, threads: int) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(parquet), str(threads)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rope, logits = proc.stdout.split()
    return rope, logits


def test_first_forward_is_the_same_in_every_fresh_process(smollm2_dir, pg_paragraphs):
    # One thread computes the table on one path: the reference. Elementwise math gives the same bits however the
    # range is split, so every 2-thread process must match it (their logits differ from 1 thread's: GEMMs split
    # their reductions by thread).
    ref_rope, _ = first_forward(smollm2_dir, pg_paragraphs, 1)
    # Without the warm-up about 1 process in 4 computed another table here (3 of 12), so 12 catch it ~97% of the time.
    runs = [first_forward(smollm2_dir, pg_paragraphs, 2) for _ in range(12)]
    assert [r for r, _ in runs] == [ref_rope] * len(runs)
    assert len({lg for _, lg in runs}) == 1
