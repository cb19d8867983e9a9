"""Config loading and validation against the schema (pausetune/schemas/config.schema.yaml; workflow/schemas/ links it).

The schema is the one source of truth for keys, types and defaults: the Snakefile validates with it
(Snakemake's `validate`), and every CLI subcommand validates the config it is handed the same way, so a
stage run from Snakemake, from dvc.yaml or by hand sees the same resolved values.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import yaml

from .io import PausetuneError, cut, quote

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"  # shipped in the package


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _validator_with_defaults():
    import jsonschema

    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


# What the schema's name and path patterns ($defs name, relpath) mean, for the one error line.
PATTERN_MEANING = {
    "name": "a name: a letter or digit, then letters, digits, '_', '.', '-' (names become folder names and shell "
            "words)",
    "relpath": "a relative path inside the project: parts of letters, digits, '_', '.', '-', none '.' or '..'",
}


def _one_line(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    defs = load_schema()["$defs"]
    meaning = next((m for d, m in PATTERN_MEANING.items() if error.schema is not None and error.validator in
                    ("pattern", "type") and error.schema.get("pattern") == defs[d]["pattern"]), None)
    if meaning:
        return f"config key '{path or '<top>'}': expected {meaning}, got {quote(error.instance)}"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = sorted(error.schema.get("properties", {}))
        key = ".".join(filter(None, [path, extra[0] if extra else ""]))
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}': unknown key{hint}"
    if error.validator == "required":
        return f"config key '{path or '<top>'}': {error.message}"
    expected = {
        "type": lambda: f"expected {error.validator_value}, got {quote(error.instance)}",
        "enum": lambda: f"expected one of {json.dumps(error.validator_value)}, got {quote(error.instance)}",
        "const": lambda: f"expected {json.dumps(error.validator_value)}, got {quote(error.instance)}",
        "pattern": lambda: f"expected a string matching {error.validator_value}, got {quote(error.instance)}",
    }.get(error.validator, lambda: cut(error.message))()
    return f"config key '{path or '<top>'}': {expected}"


def validate(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults in place and validate; raise PausetuneError with one line naming the key."""
    import jsonschema

    schema = schema or load_schema()
    cls = _validator_with_defaults()
    # Defaults are filled during the first pass; validate again so filled values are checked too.
    list(cls(schema).iter_errors(config))
    errors = list(cls(schema).iter_errors(config))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        # best_match prefers shallow errors; the deepest one names the key the user got wrong.
        while error.context:
            error = jsonschema.exceptions.best_match(error.context)
        raise PausetuneError(_one_line(error))
    check_references(config)
    return config


def check_references(config: dict) -> None:
    """Cross-key checks a JSON schema cannot express: names that refer to other entries (on a validated config:
    the schema's defaults are filled)."""
    models, sources, shards = config.get("models") or {}, config.get("sources") or {}, config["shards"]
    for name in shards["models"]:
        if models and name not in models:
            raise PausetuneError(f"config key 'shards.models': unknown model '{name}'; known: {sorted(models)}")
    for name in shards["sources"]:
        if sources and name not in sources:
            raise PausetuneError(f"config key 'shards.sources': unknown source '{name}'; known: {sorted(sources)}")
    for name, entry in models.items():
        src = entry["source"]
        if src["kind"] == "random" and src.get("tokenizer_from") not in models:
            raise PausetuneError(
                f"config key 'models.{name}.source.tokenizer_from': unknown model '{src.get('tokenizer_from')}'"
            )
    seq_len = shards["seq_len"]
    for name in shards["models"]:
        limit = models.get(name, {}).get("max_context")
        if limit and seq_len > limit:  # here, not in train: max_context is no rule's rerun trigger
            raise PausetuneError(f"config key 'shards.seq_len': seq_len {seq_len} exceeds the maximum context {limit} "
                                 f"of model '{name}' (models.{name}.max_context)")
    pause = config["pause"]
    if pause["mode"] == "reserved" and not pause["reserved_token"]:
        raise PausetuneError("config key 'pause.reserved_token': required when pause.mode is 'reserved'")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def yaml_error(path, e) -> PausetuneError:
    """File, line, column and the parser's problem, in one line (PyYAML's own message spans four)."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return PausetuneError(f"{where}: not valid YAML ({problem}{f', {context}' if context else ''})")


# Values that YAML aliases may add beyond those written out: config/config.yaml's own anchors add about a hundred; an
# alias bomb (a few hundred bytes, aliases of aliases) adds billions, which Snakemake's validate then prints.
MAX_ALIAS_VALUES = 10_000


def load_yaml(text: str, path):
    """safe_load, refusing aliases that expand past MAX_ALIAS_VALUES (counted on the parsed graph, which shares
    each anchored node: cheap however large the expansion) and nesting too deep for the parser, in one line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n) -> int:
            if id(n) not in sizes:
                kids = [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else \
                    n.value if isinstance(n, yaml.SequenceNode) else []
                sizes[id(n)] = 1 + sum(expanded(k) for k in kids)
            return sizes[id(n)]

        extra = expanded(node) - len(sizes)  # values the aliases add: expanded size - nodes written
        if extra > MAX_ALIAS_VALUES:
            raise PausetuneError(f"{path}: YAML aliases expand to {extra} more values than the file writes out "
                                 f"(at most {MAX_ALIAS_VALUES}: an alias bomb?); write the values out")
        return loader.construct_document(node)
    except RecursionError:
        raise PausetuneError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def check_yaml_file(path) -> None:
    """Read a config file as Snakemake does (JSON, else YAML) only to report what it would reject, in one line with
    file, line and column (Snakemake's own message names neither); a missing file is left to Snakemake."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError):
        return
    except UnicodeDecodeError as e:
        raise PausetuneError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = load_yaml(text, path)
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
    if not isinstance(data, dict):
        raise PausetuneError(f"{path}: expected a mapping of config keys at the top level, got "
                             f"{'nothing' if data is None else type(data).__name__}")


def snakemake_args(argv: list[str]):
    """A snakemake command line as Snakemake's own parser reads it (abbreviations, `--configfile=F`, profiles
    included); None when it does not parse (Snakemake then says why) or there is no Snakemake to parse it."""
    import contextlib
    import io

    try:
        import snakemake.cli
    except ImportError:  # the rules' conda envs have no Snakemake (and no command line of it to check)
        return None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _, args = snakemake.cli.parse_args(list(argv))
    except (SystemExit, Exception):
        return None
    return args


def snakemake_configfiles(argv: list[str]) -> list[str]:
    """The files a snakemake command line passes as --configfile (snakemake_args)."""
    return [str(p) for p in getattr(snakemake_args(argv), "configfile", None) or []]


def check_snakemake_configfiles(argv: list[str]) -> None:
    """Each --configfile of a snakemake command line through check_yaml_file: Snakemake parses them before any of
    the workflow's code runs, so the Snakefile cannot; scripts/run.sh calls this before snakemake."""
    for path in snakemake_configfiles(argv):
        check_yaml_file(path)


def load_config(paths: Iterable[str] = (), json_str: str | None = None) -> dict:
    """Merge YAML files in order (later wins), then a JSON string, then validate."""
    config: dict[str, Any] = {}
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                data = load_yaml(f.read(), p) or {}
        except FileNotFoundError:
            raise PausetuneError(f"{p}: config file not found") from None
        except yaml.YAMLError as e:
            raise yaml_error(p, e) from None
        if not isinstance(data, dict):
            raise PausetuneError(f"{p}: expected a mapping at the top level")
        config = deep_merge(config, data)
    if json_str:
        try:
            config = deep_merge(config, json.loads(json_str))
        except json.JSONDecodeError as e:
            raise PausetuneError(f"--config-json: not valid JSON ({e.msg})") from None
    return validate(config)


# ---------------------------------------------------------------------------------------------------------
# Typed section views (litgpt-style): attribute access to a validated section, the schema's defaults filled in.
# Fields carry no defaults of their own (the schema is the one home of defaults; tests/test_config.py holds each
# view's fields to the schema's keys), so code reads `cfg.lr`, never `cfg.get("lr", 2e-4)`.


@functools.lru_cache(maxsize=None)
def _section_validator(path: tuple[str, ...]):
    """The default-filling validator of the schema's part at `path` ('*': an entry of a by-name map, such as
    sources.<name> or tasks.<name>; ('$defs', name): a shared definition such as the lengths spec)."""
    schema = load_schema()
    if path[:1] == ("$defs",):
        sub = schema["$defs"][path[1]]
    else:
        sub = schema
        for key in path:
            sub = sub["additionalProperties"] if key == "*" else sub["properties"][key]
    return _validator_with_defaults()({**sub, "$defs": schema.get("$defs", {})})


def schema_default(*path: str):
    """The schema's default at a dotted path, for a library function's keyword default (e.g. the bootstrap count
    of core.report.stats): one home for each default even where no config is at hand."""
    sub = load_schema()
    for key in path:
        sub = sub["properties"][key]
    return copy.deepcopy(sub["default"])


def filled(path: tuple[str, ...], data: dict | None, where: str | None = None) -> dict:
    """A copy of one config section with the schema's defaults filled in, validated against its part of the
    schema (one line naming `where`, default the dotted path, on error). For sections whose keys depend on a
    `kind` (sources, model sources, tasks), where a typed view would be a union; the others have views below."""
    import jsonschema

    data = copy.deepcopy(dict(data or {}))
    errors = list(_section_validator(tuple(path)).iter_errors(data))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        while error.context:
            error = jsonschema.exceptions.best_match(error.context)
        prefix = where or ".".join(path)
        msg = _one_line(error).replace("config key '", f"config key '{prefix}.", 1)
        raise PausetuneError(msg.replace(".'", "'").replace(".<top>'", "'"))
    return data


class Section:
    """Base of the typed views. `of(config)` takes the whole config, `from_dict(d)` just the section (validated
    here against its part of the schema, so a partial dict in a test or a bench gets the schema's defaults)."""
    PATH: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: dict):
        section = config
        for key in cls.PATH:
            section = (section or {}).get(key, {})
        return cls.from_dict(section)

    @classmethod
    def from_dict(cls, data: dict | None):
        import dataclasses
        import typing

        data = filled(cls.PATH, data)
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            kind = hints[f.name]
            if isinstance(kind, type) and issubclass(kind, Section):
                value = kind.from_dict(value)
            values[f.name] = value
        return cls(**values)

    def to_dict(self) -> dict:
        import dataclasses

        return {f.name: (getattr(self, f.name).to_dict() if isinstance(getattr(self, f.name), Section)
                         else copy.deepcopy(getattr(self, f.name))) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        import dataclasses

        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LoraConfig(Section):
    PATH = ("train", "lora")
    r: int
    alpha: float
    dropout: float
    target_modules: list


@dataclass(frozen=True)
class TrainConfig(Section):
    PATH = ("train",)
    models: list
    seeds: list
    lora: LoraConfig
    objective: str
    loss_on: str
    batch_size: int
    grad_accum: int
    lr: float
    warmup_steps: int
    max_steps: int
    weight_decay: float
    max_grad_norm: Optional[float]
    scheduler: str
    quantization: str
    gradient_checkpointing: bool
    dtype: str
    autocast: str
    save_every: int
    eval_every: int
    train_pause_embedding: bool
    eval_rows: Optional[int]
    threads: Optional[int]
    resources: dict


@dataclass(frozen=True)
class EvalConfig(Section):
    PATH = ("eval",)
    models: list
    variants: list
    tasks: list
    lengths: Any
    depths: Any
    task_grid: dict
    seeds: list
    haystack_sources: list
    paragraph_method: Optional[str]
    buffer: int
    sentence_end: str
    needle_prefix: str
    max_new_tokens: int
    closed_book: bool
    measure: list
    block: str
    batch_size: int
    reuse_prefix: bool
    dtype: str
    device: Optional[str]
    prefill_chunk: int
    threads: Optional[int]
    resources: dict
    judge: Optional[dict]
    answer_pauses: int  # the pause-before-answer arm's markers
    ms_poe: dict  # the ms-poe arm's ratios and first layer


@dataclass(frozen=True)
class ShardsConfig(Section):
    PATH = ("shards",)
    models: list
    sources: list
    seq_len: int
    validation_fraction: float
    holdout_haystack: bool
    haystack_fraction: float


@dataclass(frozen=True)
class PublishConfig(Section):
    PATH = ("publish",)
    page: str
    figures_dir: str
    tables_dir: str
    title: str


@dataclass(frozen=True)
class ReportConfig(Section):
    PATH = ("report",)
    bootstrap: int
    skip_bad_cells: bool
    primary: Optional[dict]
    effective_length: dict


@dataclass(frozen=True)
class ExamplesConfig(Section):
    PATH = ("examples",)
    count: int
    validation_count: int
    lengths: dict
    needles: int
    depths: dict
    template: str
    authors_template: str
    answer: str


@dataclass(frozen=True)
class BanksConfig(Section):
    PATH = ("banks",)
    eval_fraction: float
    train: dict
    eval: dict
    eval_ood: dict
    associations: dict


@dataclass(frozen=True)
class PauseConfig(Section):
    PATH = ("pause",)
    token: str
    mode: str
    reserved_token: Optional[str]


@dataclass(frozen=True)
class ParagraphsConfig(Section):
    PATH = ("paragraphs",)
    method: str
    min_words: int


@dataclass(frozen=True)
class PromptConfig(Section):
    PATH = ("prompt",)
    system: str
    instruction: str
    plain_template: str


VIEWS = (LoraConfig, TrainConfig, EvalConfig, ShardsConfig, PublishConfig, ReportConfig, ExamplesConfig, BanksConfig,
         PauseConfig, ParagraphsConfig, PromptConfig)


def train_seed_of(config: dict, train_seed: int | None) -> int:
    """The run's training seed: one of train.seeds (default its first), one line otherwise."""
    seeds = TrainConfig.of(config).seeds
    if train_seed is None:
        return int(seeds[0])
    if int(train_seed) not in seeds:
        raise PausetuneError(f"--train-seed {train_seed}: not in config key 'train.seeds' {seeds}")
    return int(train_seed)


def source_spec(config: dict, name: str) -> dict:
    """sources.<name> with its kind's defaults filled in."""
    return filled(("sources", "*"), config["sources"][name], f"sources.{name}")


def task_spec(name: str, spec: dict) -> dict:
    """tasks.<name> with its kind's defaults filled in (RULER value digits, hops, chains, bank)."""
    return filled(("tasks", "*"), spec, f"tasks.{name}")


def subset(config: dict, *keys: str) -> str:
    """JSON of the named top-level keys: what a Snakemake rule hands its CLI call (and reruns on)."""
    return json.dumps({k: config[k] for k in keys if k in config}, sort_keys=True)
