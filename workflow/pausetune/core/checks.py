"""Checks of an eval grid before anything runs: config-level (while the DAG is built) and in the model's own tokens."""
from __future__ import annotations

from pathlib import Path

from .design import BLOCKS, CHECKPOINT, COMPARISONS, VARIANTS, format_depth
from .evaluation.grid import expand_depths, expand_lengths, task_axes
from .io import PausetuneError
from .data.needles import check_task

def check_eval(config: dict, prepared_root: str | Path | None = "data/models") -> list[str]:
    """Config-level checks of the eval grid (a validated config: the schema's defaults are filled); one line naming
    the key. Tokenizer checks if models are prepared; returns the models that are not (their budgets unchecked)."""
    ev, tasks = config["eval"], config["tasks"]
    models = config.get("models") or {}  # no default: a config may name none
    for m in ev["models"]:
        if m not in models:
            raise PausetuneError(f"config key 'eval.models': unknown model '{m}'; known: {sorted(models)}")
    for v in ev["variants"]:
        if v not in VARIANTS:
            raise PausetuneError(f"config key 'eval.variants': unknown variant '{v}'; known: {list(VARIANTS)}")
        if v in CHECKPOINT:
            for m in ev["models"]:
                if m not in config["train"]["models"]:
                    raise PausetuneError(f"config key 'eval.variants': '{v}' needs a checkpoint of model '{m}', "
                                         f"which train.models does not list")
    for t in ev["tasks"]:
        if t not in tasks:
            raise PausetuneError(f"config key 'eval.tasks': unknown task '{t}'; known: {sorted(tasks)}")
        check_task(t, tasks[t])
    if ev["block"] not in BLOCKS:
        raise PausetuneError(f"config key 'eval.block': expected one of {list(BLOCKS)}")
    for s in ev["haystack_sources"]:
        if config.get("sources") and s not in config["sources"]:
            raise PausetuneError(f"config key 'eval.haystack_sources': unknown source '{s}'")
    for t in ev["task_grid"]:
        if t not in tasks:
            raise PausetuneError(f"config key 'eval.task_grid.{t}': unknown task '{t}'; known: {sorted(tasks)}")
    per_task = {t: task_axes(config, t) for t in ev["tasks"]}
    lengths = sorted({n for ls, _ in per_task.values() for n in ls}) or expand_lengths(ev["lengths"])
    expand_depths(ev["depths"])
    if ev["block"] == "length" and len({tuple(ds) for _, ds in per_task.values()}) > 1:
        raise PausetuneError("config key 'eval.task_grid': tasks with different depths need eval.block seed or cell "
                             "(a length block's outputs are one depth list)")
    check_primary(config)
    check_prompt_layouts(config)
    judge = ev.get("judge")
    if judge and judge.get("kind") == "local" and judge.get("model") not in models:
        raise PausetuneError(f"config key 'eval.judge.model': unknown model '{judge.get('model')}'")
    if judge and judge.get("kind") == "openai" and not (judge.get("base_url") and judge.get("model")):
        raise PausetuneError("config key 'eval.judge': kind 'openai' needs base_url and model")
    for m in ev["models"]:
        limit = models[m].get("max_context")
        for n in lengths:
            if limit and n + ev["max_new_tokens"] > limit:
                raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                     f"{ev['max_new_tokens']} exceeds models.{m}.max_context {limit}")
    unchecked = []
    if prepared_root is not None:
        check_chat_templates(config, prepared_root)
        for m in ev["models"]:
            mdir = Path(prepared_root) / m
            if (mdir / "prepared.json").exists():
                check_positional(config, m, mdir)
                check_budgets(config, m, mdir)
            else:
                unchecked.append(m)
    return unchecked


def check_prompt_layouts(config: dict) -> None:
    """A model without a chat template (models.X.chat_template false) tuned on retrieval examples in the authors'
    layout is evaluated with prompt.plain_template: the two must be the same text, or the tuned model is asked in a
    layout it never saw (config/paper.yaml sets them equal)."""
    ex, train = config.get("examples") or {}, config.get("train") or {}
    if train.get("objective") != "retrieval" or ex.get("template") != "authors":
        return
    plain = (config.get("prompt") or {}).get("plain_template")
    for m in train.get("models") or []:
        entry = (config.get("models") or {}).get(m, {})
        if entry.get("chat_template") is False and ex.get("authors_template") != plain:
            raise PausetuneError(f"config key 'examples.authors_template': model '{m}' (models.{m}.chat_template "
                                 f"false) is tuned in examples.authors_template (examples.template authors) but "
                                 f"evaluated with prompt.plain_template, and the two disagree; make them the same text")


def check_chat_templates(config: dict, prepared_root: str | Path) -> None:
    """models.X.chat_template true on a prepared model whose tokenizer has none (a base model), while the DAG is
    built: one line, before a rerun of prepare_model (the entry is its rerun trigger) deletes the prepared model.
    The models whose prompts are built (eval.models, and train.models: their examples), whose tokenizers the
    budget and examples checks load anyway; a folder prepared from another source is left to its rerun."""
    from .io import read_json
    from .models import check_chat_template, prepared_tokenizer

    models = config.get("models") or {}
    used = dict.fromkeys([*config["eval"]["models"], *config["train"]["models"]])
    for m in used:
        entry = models.get(m)
        mdir = Path(prepared_root) / m
        if not entry or not entry["chat_template"] or not (mdir / "prepared.json").exists():
            continue
        if read_json(mdir / "prepared.json").get("source") == entry["source"]:
            check_chat_template(m, entry, prepared_tokenizer(mdir))


def check_primary(config: dict) -> None:
    """A declared primary endpoint names a variant, a reference and a task of this grid, a contrast the tables make
    (core.design.COMPARISONS), and lengths of that task's grid."""
    declared = (config.get("report") or {}).get("primary")
    if not declared:
        return
    ev = config["eval"]
    for key in ("variant", "reference"):
        v = declared[key]
        if v not in VARIANTS:
            raise PausetuneError(f"config key 'report.primary.{key}': unknown variant '{v}'; known: {list(VARIANTS)}")
        if v not in ev["variants"]:
            raise PausetuneError(f"config key 'report.primary.{key}': variant '{v}' is not in eval.variants "
                                 f"{ev['variants']}")
    if (declared["variant"], declared["reference"]) not in COMPARISONS:
        raise PausetuneError(f"config key 'report.primary': {declared['variant']} vs {declared['reference']} is not a "
                             f"contrast the tables make; made: {[f'{a} vs {b}' for a, b in COMPARISONS]}")
    t = declared["task"]
    if t not in ev["tasks"]:
        raise PausetuneError(f"config key 'report.primary.task': unknown task '{t}'; eval.tasks: {ev['tasks']}")
    lengths = declared.get("lengths")
    if lengths:
        grid = task_axes(config, t)[0]
        off = [n for n in lengths if n not in grid]
        if off:
            raise PausetuneError(f"config key 'report.primary.lengths': length {off[0]} is not in task '{t}''s grid "
                                 f"{grid}")


def check_block(config: dict, model: str, variant: str, tasks: list[str], lengths: list[int],
                depths: list[float]) -> None:
    """The CLI's checks of the one block it runs (its config may hold only this block's keys)."""
    models, ev = config.get("models") or {}, config["eval"]
    if model not in models:
        raise PausetuneError(f"config key 'models': unknown model '{model}'; known: {sorted(models)}")
    if variant not in VARIANTS:
        raise PausetuneError(f"config key 'eval.variants': unknown variant '{variant}'; known: {list(VARIANTS)}")
    for t in tasks:
        if t not in config["tasks"]:
            known = sorted(config["tasks"])
            raise PausetuneError(f"config key 'eval.tasks': unknown task '{t}'; known: {known}")
        check_task(t, config["tasks"][t])
    for d in depths:
        if not 0 <= float(d) <= 100:
            raise PausetuneError(f"config key 'eval.depths': depth {format_depth(d)} is outside 0-100")
    for n in lengths:
        if int(n) < 1:
            raise PausetuneError(f"config key 'eval.lengths': length {n} is not positive")
        limit = models[model].get("max_context")
        if limit and int(n) + ev["max_new_tokens"] > limit:
            raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                 f"{ev['max_new_tokens']} exceeds models.{model}.max_context {limit}")


def check_budgets(config: dict, model: str, model_dir: str | Path, tokenizer=None, answer_pauses: bool | None = None
                  ) -> None:
    """Every cell of the grid fits: window, needles and prompt inside each length, counted in the model's tokens.
    answer_pauses: count eval.answer_pauses markers after the question (default: where a variant of eval.variants
    puts them)."""
    import copy

    from .data.haystack import PromptBuilder, budget
    from .design import ANSWER_PAUSES
    from .models import max_context, prepared_tokenizer
    from .data.needles import build_task
    from .tokens import setup_pause

    ev = config["eval"]
    tokenizer = tokenizer or prepared_tokenizer(model_dir)
    if answer_pauses is None:
        answer_pauses = any(v in ANSWER_PAUSES for v in ev.get("variants", []))
    # the markers as that variant's tokenizer encodes them (a copy: special mode adds the token)
    after = setup_pause(copy.deepcopy(tokenizer), config["pause"]) * ev["answer_pauses"] if answer_pauses else None
    check_max_context(config, model, model_dir)
    limit = max_context(model_dir, config["models"][model])
    per_task = {t: task_axes(config, t) for t in ev["tasks"]}
    for n in sorted({n for ls, _ in per_task.values() for n in ls}):
        if n + ev["max_new_tokens"] > limit:
            raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                 f"{ev['max_new_tokens']} exceeds the context window of model '{model}' ({limit})")
    builder = PromptBuilder(tokenizer, config, model, boundaries=False, answer_pauses=after)
    for t in ev["tasks"]:
        spec = config["tasks"][t]
        lengths, depths = per_task[t]
        fixed = spec["kind"] in ("single", "multi") and not spec.get("bank")  # the same needles: count them once
        bank = None
        if spec.get("bank"):
            from .data.banks import task_bank

            bank = task_bank(config, spec["bank"])
        for s in ev["seeds"][:1] if fixed else ev["seeds"]:
            for n in lengths:
                for d in depths[:1] if fixed else depths:
                    inst = build_task(t, spec, config["seed"], s, n, d, bank=bank)
                    nt = sum(len(x) for x in builder.encode_needles(inst.needles))
                    budget(n, ev, nt, builder.overhead(inst.question), task=t)


def check_judge(judge: dict | None, timeout: float = 10.0) -> None:
    """An openai judge's key and endpoint, checked before any model loads: otherwise a missing key or a dead
    endpoint shows only after the model load and the first generation."""
    import os
    import urllib.error
    import urllib.request

    if not judge or judge.get("kind") != "openai":
        return
    env = judge["api_key_env"]
    key = os.environ.get(env)
    if not key:
        raise PausetuneError(f"config key 'eval.judge.api_key_env': environment variable {env} is not set")
    url = judge["base_url"].rstrip("/") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            pass
    except urllib.error.HTTPError as e:  # it answered: reachable; only a refused key is worth stopping for
        if e.code in (401, 403):
            raise PausetuneError(f"judge endpoint {judge['base_url']}: refused the key in ${env} (HTTP {e.code})") \
                from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PausetuneError(f"judge endpoint {judge['base_url']}: unreachable ({reason}); check eval.judge.base_url "
                             f"and the network, or set eval.judge to null") from None


def check_positional(config: dict, model: str, model_dir: str | Path) -> None:
    """The ms-poe arm on a prepared model, from its config.json (cheap: no torch): a model type it cannot hook, or
    eval.ms_poe.from_layer past the last layer, fails while the DAG is built instead of in the eval job."""
    from .design import POSITIONAL
    from .models import model_config
    from .positional import check_model

    if not set(POSITIONAL) & set(config["eval"]["variants"]):
        return
    cfg = model_config(model_dir)
    check_model(model, cfg.get("model_type", "?"), int(cfg.get("num_hidden_layers", 0)), config["eval"]["ms_poe"])


def check_max_context(config: dict, model: str, model_dir: str | Path) -> None:
    """models.X.max_context may lower the prepared model's own window (max_position_embeddings), never raise it."""
    import json

    from .models import resolve_path

    limit = config["models"][model].get("max_context")
    if not limit:
        return
    path, _ = resolve_path(model_dir)
    cfg = json.loads((Path(path) / "config.json").read_text())
    own = cfg.get("max_position_embeddings") or cfg.get("n_positions")
    if own and int(limit) > int(own):
        raise PausetuneError(f"config key 'models.{model}.max_context': {limit} exceeds the model's own window "
                             f"({own}, max_position_embeddings in {Path(path) / 'config.json'})")


def once(store: str | Path, name: str, config: dict, models_root: str | Path, check, /, *args, **kwargs) -> None:
    """Run a DAG-time check in the models' own tokens unless it passed before with the same inputs. Snakemake parses
    the Snakefile afresh on every call, and such a check loads transformers and a tokenizer (about 4 s, more than
    the rest of a `snakemake -n`). The key: the check, the whole config, the checking code (its fingerprint) and the
    size and time of every prepared model's prepared.json (a re-prepared model is another input); a pass leaves an
    empty file named by the key under `store`, a failure none, so a failing input is checked again every time."""
    import hashlib
    import json

    from .fingerprint import fingerprint

    h = hashlib.sha256(json.dumps({"check": name, "config": config, "code": fingerprint(check.__module__)},
                                  sort_keys=True, default=str).encode())
    for m in sorted(config.get("models") or {}):
        f = Path(models_root) / m / "prepared.json"
        try:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0-\n".encode())
    mark = Path(store) / h.hexdigest()
    if mark.exists():
        return
    check(*args, **kwargs)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
