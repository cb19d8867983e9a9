"""The eval engine gives exactly the greedy answers of per-cell `model.generate(do_sample=False)` (fp32, CPU).

Checked on a random Llama (fast, many cells, logits scaled up so answers vary) and on the real SmolLM2 with real
haystack prompts; plus the pieces: lower-right causal attention by split flash calls, the buffer cache.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pausetune.core.evaluation.engine import BufferCache, Engine, Request, _split_lower_right_cpu, eos_ids_of, generate_reference


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 OpenMP threads on a 2-core machine shared with other jobs spin at every barrier (measured: a SmolLM2
    # decode step 0.65 s with 2 threads against 0.09 s with 1 under load); equality does not depend on it.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_llama(layers: int = 2, seed: int = 0):
    """A small random Llama (grouped-query attention: 4 query heads, 2 key-value heads), stock sdpa attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


@pytest.fixture(scope="module")
def rand_model():
    return small_llama()


def _cells(rng: random.Random, stream: list[int], lengths, depths, head, tail, needle):
    reqs = []
    for n in lengths:
        hay = stream[:n]
        for d in depths:
            p = n if d == 100 else int(n * d / 100)
            ids = head + hay[:p] + needle + hay[p:] + tail
            reqs.append(Request((n, d), ids, len(head) + p))
    rng.shuffle(reqs)
    return reqs


def test_split_attention_equals_masked_sdpa():
    torch.manual_seed(0)
    for past, q_len, g in ((37, 11, 3), (300, 200, 2), (5, 64, 1)):
        q = torch.randn(2, 3 * g, q_len, 16)
        k = torch.randn(2, 3, past + q_len, 16)
        v = torch.randn(2, 3, past + q_len, 16)
        mask = (torch.arange(q_len)[:, None] + past >= torch.arange(past + q_len)[None, :])
        ref = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)
        out = _split_lower_right_cpu(q, k, v, None)
        assert torch.allclose(out, ref, atol=2e-6), (out - ref).abs().max()


def test_buffer_cache_crop_and_grow():
    c = BufferCache(num_layers=1, capacity=4)
    layer = c.layers[0]
    k = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1)
    layer.update(k[:, :, :3], k[:, :, :3])
    layer.update(k[:, :, 3:], k[:, :, 3:])  # grows past the capacity
    assert c.get_seq_length() == 6 and layer.keys.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    c.truncate(2)
    layer.update(k[:, :, 5:], k[:, :, 5:])
    assert layer.keys.flatten().tolist() == [0, 1, 5] and layer.get_mask_sizes(4) == (7, 0)
    layer.crop(-1)
    assert c.get_seq_length() == 2


@pytest.mark.parametrize("batch_size, reuse, chunk",
                         [(1, True, 4096), (3, True, 512), (2, True, 97), (2, False, 512)])
def test_engine_equals_generate_random_model(rand_model, batch_size, reuse, chunk):
    rng = random.Random(1)
    stream = [rng.randrange(4, 320) for _ in range(1500)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    reqs = _cells(rng, stream, (200, 600, 1400), (0, 20, 50, 80, 100), head, tail, needle)
    assert_engine_equals_generate(rand_model, reqs, batch_size, reuse, chunk)


def assert_engine_equals_generate(model, reqs, batch_size: int, reuse: bool, chunk: int) -> None:
    """The engine's greedy answers equal `generate`'s for every request, the answers differ between cells, reuse
    borrows whole chunks for much of the prefill, and stock attention is restored after the run."""
    eng = Engine(model, [2], max_new_tokens=12, batch_size=batch_size, reuse_prefix=reuse, prefill_chunk=chunk)
    got = {r.key: r for r in eng.run(reqs)}
    assert set(got) == {r.key for r in reqs}
    answers = set()
    for r in reqs:
        ref, _ = generate_reference(model, r.ids, 12, [2])
        assert got[r.key].new_ids == ref, r.key
        answers.add(tuple(ref))
    assert len(answers) > 5  # the answers really differ between cells
    if reuse and chunk < 1000:
        shared = [got[r.key].timing["shared_prefix_tokens"] for r in reqs]
        assert all(n % chunk == 0 for n in shared)  # whole chunks only
        assert sum(shared) > 0.3 * sum(len(r.ids) for r in reqs)  # much of the prefill came from the cache
    assert model.config._attn_implementation == "sdpa"  # restored after the run


def test_finished_rows_idle_in_the_decode_batch(rand_model):
    """Rows of one batch stop at different steps (an EOS id that some rows emit early, others late or never): every
    row's answer equals `generate`'s, the live-row count per step shrinks and adds up to the tokens decoded after
    the first, and a finished row's slot keeps the batch's shape (its neighbours' bits do not move when it stops)."""
    rng = random.Random(3)
    stream = [rng.randrange(4, 320) for _ in range(900)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    reqs = _cells(rng, stream, (150, 400, 800), (0, 60), head, tail, needle)[:4]  # different lengths: left padding
    T = 14
    free = {r.key: r.new_ids for r in Engine(rand_model, [], T, batch_size=4, prefill_chunk=64).run(reqs)}
    assert all(len(a) == T for a in free.values())
    cands = []  # EOS candidates: tokens some row emits early (step 2-6) while another row emits them later or never
    for a in free.values():
        for t in a[1:6]:
            firsts = [b.index(t) if t in b else T for b in free.values()]
            if len(set(firsts)) >= 3 and t not in cands:
                cands.append(t)
    assert len(cands) >= 2, cands
    for t in cands[:3]:
        eng = Engine(rand_model, [t], T, batch_size=4, prefill_chunk=64)
        got = {r.key: r.new_ids for r in eng.run(reqs)}
        rows = eng.decode_rows
        for r in reqs:
            ref, _ = generate_reference(rand_model, r.ids, T, [t])
            assert got[r.key] == ref, (t, r.key)
            assert got[r.key] == free[r.key][:len(got[r.key])]  # an early stop elsewhere changed nothing here
        lens = sorted(len(a) for a in got.values())
        assert lens[0] < lens[-1]  # the rows really stop at different steps
        assert rows == sorted(rows, reverse=True) and len(rows) == lens[-1] - 1 and rows[-1] < rows[0]
        assert sum(rows) == sum(n - 1 for n in lens)  # one live row-step per token after the first


def _bf16_model(rand_model):
    import copy

    m = copy.deepcopy(rand_model).to(torch.bfloat16)
    with torch.no_grad():  # sharper logits: near-ties (where rounding picks the word) are common but not everywhere
        m.lm_head.weight.mul_(4)
    return m


def assert_cells_independent(model, seed: int = 5, vocab: int = 320, alone: int = 4):
    """Each cell's answer and measures, bit for bit, the same in the full block, in the rest of a block resumed after
    two cells, shuffled, without prefix reuse, and alone (the first `alone` cells)."""
    from pausetune.core.evaluation.engine import Measure

    rng = random.Random(seed)
    stream = [rng.randrange(4, vocab) for _ in range(1400)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    reqs = sorted(_cells(rng, stream, (300, 700, 1300), (0, 30, 60, 100), head, tail, needle), key=lambda r: r.key)
    for r in reqs:
        r.measure = Measure(answers=[needle, needle[:2]], needles=[(r.shareable, r.shareable + len(needle))])

    def run(rs, **kw):
        eng = Engine(model, [2], max_new_tokens=10, batch_size=3, prefill_chunk=128, **kw)
        return {r.key: (r.new_ids, r.measures) for r in eng.run(list(rs))}

    full = run(reqs)
    assert len({tuple(a) for a, _ in full.values()}) > 4  # the answers really differ between cells
    resumed = run(reqs[2:])
    shuffled = run(random.Random(7).sample(reqs, len(reqs)))
    noreuse = run(reqs, reuse_prefix=False)
    for r in reqs:
        assert resumed.get(r.key, full[r.key]) == full[r.key], r.key
        assert shuffled[r.key] == full[r.key] == noreuse[r.key], r.key
    for r in reqs[:alone]:
        assert run([r])[r.key] == full[r.key], r.key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cells_numbers_do_not_depend_on_its_neighbours(rand_model, dtype):
    """Issue #29: the same cell gives the same answer and the same measures (bit for bit) whichever cells share its
    block and decode batch, in whichever order, with or without prefix reuse: alone, in the full block, in the rest
    of a block resumed after two cells, shuffled. bf16 is where shapes used to show (other log-probs and words)."""
    assert_cells_independent(rand_model if dtype == torch.float32 else _bf16_model(rand_model))


def test_batched_linear_rows_do_not_depend_on_their_neighbours():
    """What batched decoding relies on: at a fixed row count, a row's output bits do not depend on the other rows'
    contents nor on its slot (bf16 and fp32; the engine's CPU kernels). The row count itself does change bits
    (so eval.batch_size is part of a cell's identity)."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for k, n in ((64, 320), (576, 1536), (1536, 576)):
            w = torch.randn(n, k).to(dtype)
            x = torch.randn(4, 1, k).to(dtype)
            ref = F.linear(x, w)
            for slot in range(4):
                z = torch.randn(4, 1, k).to(dtype)
                z[slot] = x[0]
                assert torch.equal(F.linear(z, w)[slot], ref[0]), (dtype, k, n, slot)


def smollm2_requests(smollm2_dir, pg_paragraphs, cells):
    """fp32 SmolLM2, its tokenizer, and the default config's single-needle prompts at (length, depth) cells over the
    real paused haystack: what the engine-vs-generate tests compare on."""
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.models import load_model, load_tokenizer

    from conftest import DEFAULT_CONFIG

    config = load_config([str(DEFAULT_CONFIG)])
    tok = load_tokenizer(smollm2_dir)
    model = load_model(smollm2_dir, "float32", "cpu")
    essays = dict(load_essays([str(pg_paragraphs)]))
    stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), 0), 1000, None)
    b = PromptBuilder(tok, config, "smollm2")
    needle, q = config["tasks"]["single"]["needles"], config["tasks"]["single"]["question"]
    reqs = []
    for n, d in cells:
        cp = b.build(stream, n, d, needle, q)
        reqs.append(Request((n, d), cp.ids, cp.shareable))
    return tok, model, reqs


@pytest.fixture(scope="module")
def smollm2_cells(one_thread, smollm2_dir, pg_paragraphs):
    """fp32 SmolLM2, its tokenizer, the default grid's depths at 600 / 1000 tokens, and each cell's `generate`
    answer, computed once (before any engine has run on the model) for every engine-vs-generate test here."""
    tok, model, reqs = smollm2_requests(smollm2_dir, pg_paragraphs, [(n, d) for n in (600, 1000) for d in (0, 50, 100)])
    eos = eos_ids_of(model, tok)
    return tok, model, eos, reqs, {r.key: generate_reference(model, r.ids, 24, eos)[0] for r in reqs}


def test_engine_equals_generate_smollm2(smollm2_cells):
    """Real model, real haystack prompts (600 and 1000 tokens), batched decode of 2 cells."""
    tok, model, eos, reqs, refs = smollm2_cells
    reqs = [r for r in reqs if r.key in ((600, 0), (600, 50), (600, 100), (1000, 50))]
    got = {r.key: r.new_ids for r in Engine(model, eos, 24, batch_size=2, prefill_chunk=512).run(reqs)}
    hits = 0
    for r in reqs:
        ref = refs[r.key]
        assert got[r.key] == ref, (r.key, tok.decode(got[r.key]), tok.decode(ref))
        hits += "sandwich" in tok.decode(ref)
    assert hits >= 3  # the model really retrieves the needle at these lengths


def test_bench_random_shape_runs_on_cpu(smollm2_dir, tmp_path, capsys):
    """bench/eval_grid.py --random-shape (the GPU timing mode) works on the CPU with the tiny shape."""
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("eval_grid", ROOT / "bench" / "eval_grid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    rc = bench.main([str(smollm2_dir), "--random-shape", "tiny", "--lengths", "400,800", "--depths", "0,50,100",
                     "--max-new-tokens", "4", "--threads", "1", "--json", str(out), "--measure-cost",
                     "--prefill-chunk", "128"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["answers_equal"] == "6/6" and res["speedup"] > 0 and res["engine"]["prefill_tflops_per_s"] > 0
    assert res["flop_bound"] > 1  # reuse computes fewer prefill FLOPs than per-cell prefill
    assert res["engine_measure"]["measure_s"] > 0 and res["engine"]["measure_s"] == 0
    assert res["measure_overhead"] > -1  # a ratio is reported (its size is the bench's to measure, not a test's)
    assert res["gemm_peak_gflops"] > 0 and 0 < res["engine"]["prefill_share_of_peak"]
    assert res["engine"]["prefill_gflops"] == pytest.approx(res["engine"]["prefill_flop"] / res["engine"]["prefill_s"]
                                                            / 1e9, rel=0.01, abs=0.05)  # printed to 0.1
    out_text = capsys.readouterr().out
    assert "speedup engine vs naive" in out_text and "measures (logprob + attention)" in out_text
    assert "% of peak" in out_text


def test_bench_plan_grains_counts_the_engines_prefill(smollm2_dir, pg_paragraphs, tmp_path):
    """bench/eval_grid.py --plan-grains: prefill tokens per grain from the engine's own plan, no weights run; a
    coarser grain borrows fewer tokens, and every grain computes less than per-cell prefill."""
    import json

    bench = _load_bench("eval_grid")
    out = tmp_path / "plan.json"
    assert bench.main([str(smollm2_dir), "--haystack", str(pg_paragraphs), "--lengths", "1000,2000", "--depths",
                       "0,50,100", "--plan-grains", "0,128,512", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    tokens = [rows[k]["tokens"] for k in ("grain_0", "grain_128", "grain_512", "per_cell")]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1], rows


def _load_bench(name):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_decode_runs(tiny_dir, tmp_path):
    """bench/decode.py: engine and generate both decode exactly the asked tokens; per-token figures, the ratio
    and the profile split are reported."""
    import json

    out = tmp_path / "decode.json"
    rc = _load_bench("decode").main([str(tiny_dir), "--length", "300", "--cells", "4", "--new-tokens", "5",
                                     "--batch-sizes", "1,2", "--dtype", "float32", "--threads", "1", "--repeat", "1",
                                     "--generate-cells", "1", "--profile", "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["generate_ms"] > 0 and set(res["engine"]) == {"1", "2"}
    assert res["engine"]["2"]["ratio_vs_generate"] > 0
    prof = res["profile"]["2"]
    assert prof["linear"] > 0 and prof["attention"] > 0 and prof["batch"] == 2
    assert sum(prof[k] for k in ("linear", "attention", "other_ops", "python_dispatch")) == pytest.approx(
        prof["wall_ms_per_step"], rel=0.05)


def test_bench_attention_chunk_matches_masked_sdpa(tmp_path):
    """bench/attention.py: the chunk-on-cache path it times computes the masked lower-right causal result."""
    import json

    out = tmp_path / "att.json"
    rc = _load_bench("attention").main(["--lengths", "256", "--repeat", "1", "--threads", "1", "--breakdown",
                                        "--json", str(out)])
    res = json.loads(out.read_text())["attention"]
    assert rc == 0 and [r["dtype"] for r in res] == ["bfloat16", "float32"]
    assert res[1]["max_abs_err_vs_masked_sdpa"] < 1e-5 and res[0]["max_abs_err_vs_masked_sdpa"] < 2e-2
    assert all(r["ratio"] > 0 and r["breakdown"]["softmax_share_of_est"] > 0 for r in res)


def test_pause_mask_matches_the_whole_marker():
    from pausetune.core.evaluation.engine import pause_mask

    ids = [5, 7, 8, 9, 7, 3, 7, 8, 7, 8]
    assert pause_mask(ids, [7, 8]).tolist() == [False, True, True, False, False, False, True, True, True, True]
    assert pause_mask(ids, [9]).nonzero().flatten().tolist() == [3]
    assert not pause_mask(ids, []).any() and not pause_mask([1], [1, 2]).any()


def _reference_measures(model, ids: list[int], m) -> dict:
    """The same measures from plain full forwards: prompt + answer (stock attention) and eager attention weights."""
    from pausetune.core.evaluation.engine import attention_impl, attention_shares

    with torch.no_grad():
        sums, ranks = [], []
        for a in m.answers:
            lp = torch.log_softmax(model(torch.tensor([ids + a])).logits[0].float(), -1)
            steps = lp[len(ids) - 1:len(ids) - 1 + len(a)]
            sums.append(float(steps[torch.arange(len(a)), torch.tensor(a)].sum()))
            ranks.append(int((steps[0] > steps[0, a[0]]).sum()))
        with attention_impl(model, "eager"):
            att = model(torch.tensor([ids]), output_attentions=True).attentions
        rows = torch.stack([layer[0, :, -1].float().mean(0) for layer in att])
    return {"answer_logprob": sums, "needle_rank": ranks, "attention": attention_shares(rows, ids, m)}


@pytest.mark.parametrize("batch_size, reuse, chunk", [(2, True, 4096), (1, True, 53), (1, False, 512)])
def test_measures_equal_full_forward_random_model(rand_model, batch_size, reuse, chunk):
    """Teacher-forced log-probs = a full forward of prompt + answer; attention shares = eager weights (1e-5), sum
    to 1; and measuring leaves the greedy answers unchanged."""
    from pausetune.core.evaluation.engine import Measure

    rng = random.Random(2)
    stream = [rng.randrange(4, 320) for _ in range(700)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    pause = 5
    stream = [pause if i % 37 == 36 else t for i, t in enumerate(stream)]
    reqs = []
    for n, d in ((300, 0), (300, 50), (600, 50), (600, 100)):
        p = int(n * d / 100)
        ids = head + stream[:p] + needle + stream[p:n] + tail
        s = len(head) + p
        m = Measure(answers=[[21, 22, 23], [40], [7, 8]], needles=[(s, s + len(needle))], pause_ids=[pause])
        reqs.append(Request((n, d), ids, s, m))
    eng = Engine(rand_model, [2], max_new_tokens=6, batch_size=batch_size, reuse_prefix=reuse, prefill_chunk=chunk)
    got = {r.key: r for r in eng.run(reqs)}
    plain = {r.key: r.new_ids for r in eng.run([Request(q.key, q.ids, q.shareable) for q in reqs])}
    for r in reqs:
        res, ref = got[r.key].measures, _reference_measures(rand_model, r.ids, r.measure)
        assert got[r.key].new_ids == plain[r.key]
        assert res["needle_rank"] == ref["needle_rank"]
        assert res["answer_logprob"] == pytest.approx(ref["answer_logprob"], abs=1e-4)
        assert [sum(t) for t in res["answer_token_logprobs"]] == pytest.approx(res["answer_logprob"], abs=1e-5)
        assert (res["needle_margin"][0] >= 0) == (res["needle_rank"][0] == 0)
        a, b = res["attention"], ref["attention"]
        assert a["layers"] == 2
        for key in ("needle", "pause", "sink", "rest", "needle_ratio", "needle_each"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
        for layer in range(2):
            assert sum(a[k][layer] for k in ("needle", "pause", "sink", "rest")) == pytest.approx(1, abs=1e-6)
        assert a["pause"][0] > 0 and a["needle_token_share"] == pytest.approx(5 / len(r.ids), abs=1e-6)
    # attention alone (no log-probs): its own q = 1 step gives the same shares
    from dataclasses import replace

    alone = {x.key: x for x in eng.run([Request(q.key, q.ids, q.shareable, replace(q.measure, logprob=False))
                                        for q in reqs])}
    for r in reqs:
        assert "answer_logprob" not in alone[r.key].measures and alone[r.key].new_ids == plain[r.key]
        for key in ("needle", "pause", "sink", "rest"):
            assert alone[r.key].measures["attention"][key] == pytest.approx(got[r.key].measures["attention"][key],
                                                                            abs=1e-6)


def test_measures_equal_full_forward_smollm2(smollm2_cells, pg_paragraphs):
    """The real model on a real 600-token haystack prompt: the needle sentence's log-prob and the attention shares
    from the engine (prefix reuse) equal a full forward and eager attention weights."""
    from pausetune.core.config import load_config
    from pausetune.core.evaluation.engine import Measure
    from pausetune.core.data.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays

    from conftest import DEFAULT_CONFIG

    config = load_config([str(DEFAULT_CONFIG)])
    tok, model = smollm2_cells[:2]
    essays = dict(load_essays([str(pg_paragraphs)]))
    stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), 0), 600, None)
    b = PromptBuilder(tok, config, "smollm2")
    needle = config["tasks"]["single"]["needles"]
    reqs = []
    for d in (0, 50):
        cp = b.build(stream, 600, d, needle, config["tasks"]["single"]["question"])
        s = cp.needle_positions[0]
        m = Measure(answers=[tok.encode(needle[0], add_special_tokens=False)], needles=[(s, s + cp.needle_tokens)])
        reqs.append(Request(d, cp.ids, cp.shareable, m))
    got = {r.key: r.measures for r in Engine(model, eos_ids_of(model, tok), 4, prefill_chunk=512).run(reqs)}
    for r in reqs:
        ref = _reference_measures(model, r.ids, r.measure)
        assert got[r.key]["answer_logprob"] == pytest.approx(ref["answer_logprob"], abs=1e-3)
        assert got[r.key]["needle_rank"] == ref["needle_rank"]
        for key in ("needle", "sink", "rest"):
            assert got[r.key]["attention"][key] == pytest.approx(ref["attention"][key], abs=1e-5), key
        assert got[r.key]["answer_logprob"][0] > -30  # the model does read the needle: a likely continuation


def test_onednn_linear_route_runs_onednn_and_restores(rand_model):
    """The route sends prefill-sized fp32 linears through oneDNN's packed-weight op and decode-sized ones through
    F.linear (seen in the profiler), the logits stay within fp32 rounding, and the model's forward is back after."""
    from torch.profiler import ProfilerActivity, profile

    from pausetune.core.evaluation.engine import linear_kernels

    def onednn_calls(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn()
        return out, sum(e.count for e in prof.key_averages() if "linear_pointwise" in e.key)

    x = torch.randn(1, 40, 64)
    lin = rand_model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        ref = rand_model(inputs_embeds=x).logits
        with linear_kernels(rand_model, {"prefill": "onednn", "decode": "mkl"}):
            assert "forward" in vars(lin)
            out, n_big = onednn_calls(lambda: rand_model(inputs_embeds=x).logits)
            small, n_small = onednn_calls(lambda: rand_model(inputs_embeds=x[:, :1]).logits)
        assert "forward" not in vars(lin)
        ref_small = rand_model(inputs_embeds=x[:, :1]).logits
    assert n_big == 2 * 7 + 1 and n_small == 0  # 7 linears per layer and the LM head; none for one row
    assert torch.allclose(out, ref, atol=1e-4) and torch.equal(small, ref_small)
    # one row has its own class ('decode1'); a few rows (2..15) take 'decode'; without 'decode1', one row does too
    counts = {}
    for name, route in {"one": {"prefill": "mkl", "decode": "mkl", "decode1": "onednn"},
                        "few": {"prefill": "mkl", "decode": "onednn", "decode1": "mkl"},
                        "v1": {"prefill": "mkl", "decode": "onednn"}}.items():
        with torch.no_grad(), linear_kernels(rand_model, route):
            counts[name] = [onednn_calls(lambda: rand_model(inputs_embeds=x[:, :n]).logits)[1] for n in (1, 4, 40)]
    assert counts == {"one": [15, 0, 0], "few": [0, 15, 0], "v1": [15, 15, 0]}


@pytest.mark.parametrize("route", ["onednn", {"prefill": "onednn", "decode": "mkl"},
                                   {"prefill": "mkl", "decode": "onednn", "decode1": "mkl"}])
def test_engine_onednn_equals_generate_smollm2(smollm2_cells, route):
    """fp32 through oneDNN linears: greedy answers against plain fp32 `model.generate` on real haystack prompts
    (the default grid's depths at 600/1000 tokens). oneDNN rounds differently (~1e-4 on logits), so equality is
    what this checks, and the count of cells that differ is printed if any do."""
    tok, model, eos, reqs, refs = smollm2_cells
    got = {r.key: r.new_ids for r in Engine(model, eos, 24, batch_size=2, linear=route, prefill_chunk=512).run(reqs)}
    differ = [r.key for r in reqs if got[r.key] != refs[r.key]]
    assert not differ, f"{len(differ)} of {len(reqs)} cells differ: {differ}"
    assert "forward" not in vars(model.lm_head)
