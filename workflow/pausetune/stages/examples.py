"""Stage `examples`: retrieval training examples, data/examples/{model}/{variant}/tseed{seed}/ (variant pause | plain).

The training seed (`--train-seed`, one of config `train.seeds`) draws the training examples; the validation
examples, the essay split and the banks come from the root `seed`, the same for every training seed. The pause and
plain folders of one training seed hold the same examples, pause markers aside.

Built from the TRAINING essays only (pausetune.core.data.splits.essay_split, the split the shards use: the eval's
haystack essays are never in an example; validation examples come from the validation essays) and the training
needle bank; pausetune.core.data.examples says how. The folder, written atomically, holds an HF DatasetDict
(`dataset/`: train + validation, one row per example with its answer span), the tokenizer the examples were
made with (pause token included: training loads exactly it) and manifest.json (objective, template, answer span,
length range, depths, needles per example, bank hashes, counts, essay splits, tokenizer fingerprint, code).
Every check that can fail runs before anything is built: an empty bank, banks that overlap, a needle longer than
the context range, a length range above the model window (Snakemake runs them all while it builds the DAG, for the
models already prepared: pausetune.core.data.examples.check_examples_fit).
"""
from __future__ import annotations

from ..core import layout
from ..core.data.banks import bank_hash, check_banks
from ..core.config import ExamplesConfig, ShardsConfig, train_seed_of
from ..core.design import TRAIN_VARIANTS
from ..core.data.examples import ExampleBuilder, check_config, check_window, example_rng
from ..core.fingerprint import code_record
from ..core.data.haystack import load_essays
from ..core.io import PausetuneError, atomic_dir, sha256_file, write_json
from ..core.data.splits import essay_split
from ..core.tokens import setup_pause, tokenizer_fingerprint

COLUMNS = ("input_ids", "answer_start", "answer_end", "length", "depth", "needle_positions", "pause_positions",
           "bank_index")


def build_examples(paragraph_files: list[str], model_dir: str, model: str, variant: str, config: dict,
                   out_dir: str, train_seed: int | None = None) -> dict:
    import datasets

    from ..core.models import load_tokenizer, max_context, model_entry

    if variant not in TRAIN_VARIANTS:
        raise PausetuneError(f"examples variant '{variant}': expected one of {TRAIN_VARIANTS}")
    check_config(config)
    entry = model_entry(config, model)
    train_bank, eval_bank = check_banks(config)
    ex, seed = ExamplesConfig.of(config), config["seed"]
    tseed = train_seed_of(config, train_seed)
    window = max_context(model_dir, entry)
    check_window(config, model, window)
    essays = dict(load_essays(paragraph_files))
    split = essay_split(list(essays), config["shards"], seed)
    tok = load_tokenizer(model_dir)
    pause_ids = setup_pause(tok, config["pause"]) if variant == "pause" else None
    builder = ExampleBuilder(tok, config, model, pause_ids)
    builder.check_fits(train_bank)

    rows: dict[str, dict[str, list]] = {}
    counts = {}
    for name, n in (("train", ex.count), ("validation", ex.validation_count)):
        ids = split[name]
        draw = tseed if name == "train" else seed  # validation: the same rows for every training seed
        built = [builder.build(example_rng(draw, name, i), essays, ids, train_bank) for i in range(n if ids else 0)]
        too_long = [b for b in built if len(b["input_ids"]) > window]
        if too_long:
            raise PausetuneError(f"config key 'examples.lengths.max': an example has {len(too_long[0]['input_ids'])} "
                                 f"tokens with its pause markers, above the window {window} of model '{model}'")
        rows[name] = {c: [b[c] for b in built] for c in COLUMNS}
        counts[name] = {"rows": len(built), "essays": len(ids), "order": sorted(ids),
                        "tokens": sum(len(b["input_ids"]) for b in built),
                        "answer_tokens": sum(b["answer_end"] - b["answer_start"] for b in built)}
    longest = max((len(r) for part in rows.values() for r in part["input_ids"]), default=0)
    manifest = {
        "code": code_record(__name__),
        "objective": "retrieval",
        "model": model,
        "variant": variant,
        "seed": seed,
        "train_seed": tseed,
        "template": ex.template,
        "layout": builder.layout,
        "answer": ex.answer,
        "answer_span": "reply + end-of-turn tokens (columns answer_start, answer_end)",
        "end_of_turn_ids": builder.end_ids,
        "lengths": dict(ex.lengths),
        "length_unit": "model tokens, pause markers not counted",
        "depths": dict(ex.depths),
        "needles_per_example": ex.needles,
        "banks": {"train": {"size": len(train_bank), "sha256": bank_hash(train_bank)},
                  "eval": {"size": len(eval_bank), "sha256": bank_hash(eval_bank)}},
        "seq_len": longest,
        "paragraph_method": config["paragraphs"]["method"],
        "pause": dict(config["pause"]) if variant == "pause" else None,
        "pause_ids": pause_ids or [],
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
        "splits": counts,
        "holdout_haystack": ShardsConfig.of(config).holdout_haystack,
        "haystack_essays": split["haystack"],
        "train_essays": split["train"],
        "validation_essays": split["validation"],
        "sources": {p: sha256_file(p) for p in paragraph_files},
    }
    seq = datasets.Sequence(datasets.Value("int32"))
    features = datasets.Features({"input_ids": seq, "answer_start": datasets.Value("int32"),
                                  "answer_end": datasets.Value("int32"), "length": datasets.Value("int32"),
                                  "depth": datasets.Value("float64"), "needle_positions": seq,
                                  "pause_positions": seq, "bank_index": seq})
    with atomic_dir(out_dir) as tmp:
        dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(rows[name], features=features)
                                   for name in rows if rows[name]["input_ids"]})  # no empty validation split
        dd.save_to_disk(str(tmp / "dataset"))
        tok.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "manifest.json", manifest)
    return manifest


def add_arguments(p) -> None:
    p.add_argument("--inputs", nargs="+", required=True, help="data/paragraphs/{source}/{method}.parquet files")
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--model-dir", required=True, help="data/models/{model}")
    p.add_argument("--variant", required=True, choices=TRAIN_VARIANTS)
    p.add_argument("--train-seed", type=int, default=None,
                   help="the training seed, one of config train.seeds (default: its first)")
    p.add_argument("--output", required=True, help=layout.EXAMPLES)


def main(args, config: dict) -> int:
    m = build_examples(args.inputs, args.model_dir, args.model, args.variant, config, args.output, args.train_seed)
    s = m["splits"]
    print(f"examples {args.variant}: train {s['train']['rows']} ({s['train']['essays']} essays), validation "
          f"{s['validation']['rows']}, lengths {m['lengths']['min']}-{m['lengths']['max']} tokens, layout "
          f"{m['layout']}, longest {m['seq_len']} -> {args.output}")
    return 0
