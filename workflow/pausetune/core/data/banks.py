"""Needle banks: needle / question / answer triples for retrieval training and for evaluation.

Why banks: a model tuned on one needle learns that needle, and a model evaluated on one needle (the harness's San
Francisco sentence, which a web-trained model may have seen) measures one fact. The training bank gives the
`examples` stage hundreds of varied facts; the evaluation bank gives the eval `single` task (with `bank: true`)
a different fact per cell. The two never share a needle, a question subject or an answer word.

Both banks are generated from the templates and word lists below (the data; code identity covers them) plus
the `extra` triples of config `banks.train` / `banks.eval`. Each subject and answer word belongs to one side
by a fixed hash (config `banks.eval_fraction` of them to the evaluation side), so the generated banks are
disjoint by construction; each bank is a seeded draw (root seed) of `size` triples, round-robin over the
templates (varied facts, not one pattern), each question asked once per bank. The classic harness needles (San
Francisco, the pizza ingredients) and every fixed needle of config `tasks` are evaluation-only: `check_banks`
refuses a training triple that repeats any of them (same needle or same answer), in one line, when Snakemake
builds the DAG and when a stage starts.
"""
from __future__ import annotations

import hashlib
import json
import random

from ..config import BanksConfig
from ..io import PausetuneError, quote

# (needle, question, subject list, answer list); {s} is the subject, {a} the answer.
NAMES = ["Maria", "Tobias", "Aiko", "Rahul", "Elena", "Kwame", "Sofia", "Lars", "Priya", "Mateo", "Ingrid",
         "Omar", "Chloe", "Dmitri", "Hana", "Felix", "Leila", "Bruno", "Yuki", "Nadia", "Arjun", "Greta",
         "Tariq", "Lucia", "Henrik", "Amara", "Jonas", "Mei", "Pablo", "Zara", "Viktor", "Ines", "Kofi",
         "Clara", "Ravi", "Astrid", "Diego", "Noor", "Emil", "Rosa", "Hugo", "Signe", "Malik", "Freya",
         "Tomas", "Anika", "Sami", "Lena", "Marco", "Ayla", "Otto", "Selin", "Ivan", "Nora", "Kenji", "Alma",
         "Rafael", "Tove", "Idris", "Vera"]
DISHES = ["soup", "stew", "curry", "pie", "bread", "salad", "risotto", "chili", "dumplings", "pancakes",
          "lasagna", "omelette", "noodles", "casserole", "porridge", "tart", "paella", "goulash", "chowder",
          "flatbread"]
PLACES = ["library", "boathouse", "observatory", "greenhouse", "lighthouse", "museum", "workshop", "chapel",
          "warehouse", "bakery", "gymnasium", "archive", "laboratory", "conservatory", "armory", "theater",
          "stable", "garage", "cellar", "studio"]
TOWNS = ["Oakridge", "Millbrook", "Stonehaven", "Fairport", "Redwater", "Ashford", "Glenmoor", "Kingsbay",
         "Westfield", "Pinecrest", "Brightwater", "Elmstead", "Harwick", "Larkspur", "Northgate", "Seacliff",
         "Thornbury", "Valewood", "Whitby", "Yarrow"]
TEAMS = ["chess", "rowing", "debate", "robotics", "hockey", "cricket", "fencing", "sailing", "archery",
         "volleyball", "cycling", "curling", "rugby", "handball", "badminton", "lacrosse", "polo", "squash",
         "climbing", "orienteering"]
THINGS = ["old map", "spare key", "silver locket", "treasure chest", "secret diary", "golden coin",
          "family photo", "brass compass", "lost ring", "pocket watch", "love letter", "ancient scroll",
          "music box", "ruby brooch", "signed contract", "stolen painting", "copper medal", "iron key",
          "blue envelope", "jade figurine"]

SPICES = ["cardamom", "saffron", "nutmeg", "cinnamon", "paprika", "turmeric", "fennel", "anise", "clove",
          "cumin", "ginger", "sumac", "tarragon", "marjoram", "oregano", "thyme", "rosemary", "sage",
          "coriander", "mustard", "vanilla", "allspice", "lemongrass", "juniper", "caraway", "dill", "chervil",
          "fenugreek", "horseradish", "wasabi"]
COLOURS = ["turquoise", "maroon", "lavender", "crimson", "teal", "amber", "indigo", "magenta", "ochre",
           "scarlet", "cobalt", "emerald", "charcoal", "peach", "mustard-yellow", "periwinkle", "burgundy",
           "lilac", "mint", "coral", "navy", "olive", "beige", "sapphire", "vermilion", "chartreuse",
           "fuchsia", "khaki", "taupe", "cerulean"]
PASSWORDS = ["bluebird", "thunderclap", "marmalade", "snowdrop", "quicksilver", "moonbeam", "firefly",
             "stardust", "sunflower", "waterfall", "butterscotch", "nightingale", "peppermint", "driftwood",
             "windmill", "tumbleweed", "wildfire", "honeycomb", "raincloud", "hummingbird", "starling",
             "cornflower", "blackberry", "whirlpool", "lighthouse-keeper", "pinwheel", "moonstone",
             "kingfisher", "dandelion", "bonfire"]
PET_NAMES = ["Biscuit", "Pickles", "Noodle", "Waffles", "Pepper", "Muffin", "Ziggy", "Mochi", "Gizmo",
             "Pumpkin", "Tofu", "Sprout", "Bubbles", "Cosmo", "Peanut", "Nacho", "Clementine", "Dumpling",
             "Jellybean", "Marshmallow", "Pretzel", "Rocket", "Sushi", "Tinkerbell", "Fudge", "Oreo", "Kiwi",
             "Taco", "Bagel", "Truffle"]
HIDING = ["teapot", "piano", "bookcase", "chimney", "fireplace", "wardrobe", "birdhouse", "mailbox",
          "flowerpot", "suitcase", "drawer", "mattress", "attic", "basement", "toolbox", "cupboard", "barrel",
          "hatbox", "violin case", "grandfather clock", "shoebox", "pantry", "doghouse", "bathtub", "pillow",
          "lantern", "cookie jar", "umbrella stand", "sewing basket", "treehouse"]
CITIES = ["Lisbon", "Reykjavik", "Nairobi", "Kyoto", "Montevideo", "Tallinn", "Marrakesh", "Hanoi", "Oslo",
          "Cartagena", "Tbilisi", "Valparaiso", "Ljubljana", "Zanzibar", "Krakow", "Dubrovnik", "Havana",
          "Kathmandu", "Porto", "Bergen", "Seville", "Salzburg", "Quebec", "Bruges", "Galway", "Tromso",
          "Cusco", "Luang Prabang", "Oaxaca", "Sarajevo"]
NUMBERS = ["seventeen", "forty-two", "eleven", "ninety-one", "thirty-three", "sixty-four", "twenty-nine",
           "fifty-eight", "eighty-six", "thirteen", "seventy-five", "twenty-three", "nineteen", "sixty-one",
           "forty-seven", "thirty-eight", "ninety-four", "fifty-three", "eighty-two", "seventy-one",
           "twenty-six", "sixty-nine", "forty-four", "thirty-one", "ninety-seven", "fifty-six", "eighty-eight",
           "seventy-three", "fourteen", "sixty-seven"]
INSTRUMENTS = ["cello", "oboe", "harp", "trombone", "clarinet", "bassoon", "viola", "flute", "tuba", "banjo",
               "mandolin", "accordion", "xylophone", "saxophone", "harpsichord", "ukulele", "sitar",
               "bagpipes", "marimba", "timpani", "piccolo", "euphonium", "lute", "zither", "glockenspiel",
               "dulcimer", "harmonica", "double bass", "french horn", "recorder"]
LANDMARKS = ["clock tower", "old windmill", "water tower", "cathedral spire", "stone bridge", "ferris wheel",
             "radio mast", "castle keep", "grain silo", "bell tower", "town hall", "hilltop fort", "pagoda",
             "obelisk", "aqueduct", "minaret", "rotunda", "viaduct", "chimney stack", "signal tower"]
FRUITS = ["apricots", "quinces", "persimmons", "gooseberries", "kumquats", "lychees", "mulberries",
          "pomegranates", "tangerines", "elderberries", "damsons", "loquats", "guavas", "papayas", "greengages",
          "cloudberries", "rhubarb", "cranberries", "nectarines", "plantains"]
GEMS = ["opal", "garnet", "topaz", "amethyst", "onyx", "jasper", "peridot", "tourmaline", "agate", "malachite",
        "lapis", "citrine", "obsidian", "beryl", "zircon", "spinel", "quartz", "carnelian", "turquoise-stone",
        "moonstone-gem"]

TEMPLATES = [
    ("The secret ingredient in {s}'s famous {d} is {a}.", "What is the secret ingredient in {s}'s famous {d}?",
     (NAMES, DISHES), SPICES),
    ("{s}'s favourite colour is {a}.", "What is {s}'s favourite colour?", (NAMES,), COLOURS),
    ("The password to the {s} is {a}.", "What is the password to the {s}?", (PLACES,), PASSWORDS),
    ("{s} has a pet tortoise named {a}.", "What is the name of {s}'s pet tortoise?", (NAMES,), PET_NAMES),
    ("The {s} is hidden inside the {a}.", "Where is the {s} hidden?", (THINGS,), HIDING),
    ("Last summer {s} travelled alone to {a}.", "Where did {s} travel alone last summer?", (NAMES,), CITIES),
    ("The lucky number of the {s} team is {a}.", "What is the lucky number of the {s} team?", (TEAMS,), NUMBERS),
    ("{s} plays the {a} in the town orchestra.", "Which instrument does {s} play in the town orchestra?",
     (NAMES,), INSTRUMENTS),
    ("The best view in {s} is from the top of the {a}.", "Where is the best view in {s}?", (TOWNS,), LANDMARKS),
    ("Every autumn {s} makes jam from {a}.", "What does {s} make jam from every autumn?", (NAMES,), FRUITS),
    ("The stone set in {s}'s ring is a {a}.", "What stone is set in {s}'s ring?", (NAMES,), GEMS),
]

# The out-of-template evaluation bank (issue #28): sentence shapes no training template has, subjects and answer
# words of their own. A model tuned on TEMPLATES that finds these has learnt to retrieve, not to fill a template.
TOOLS = ["chisel", "trowel", "awl", "spokeshave", "plane", "mallet", "rasp", "bradawl", "hacksaw", "pliers",
         "spanner", "scythe", "sickle", "adze", "gimlet", "vise", "crowbar", "pickaxe", "hatchet", "level"]
BIRDS = ["heron", "kestrel", "curlew", "wren", "plover", "egret", "lapwing", "osprey", "bittern", "siskin",
         "goldcrest", "dipper", "nuthatch", "redstart", "avocet", "shrike", "linnet", "fieldfare", "merlin", "twite"]
VESSELS = ["schooner", "ketch", "dinghy", "trawler", "barge", "sloop", "catamaran", "junk", "dhow", "coracle",
           "felucca", "yawl", "gondola", "punt", "tug", "clipper", "galleon", "canoe", "kayak", "ferry"]
YEARS = ["1783", "1812", "1847", "1869", "1891", "1904", "1923", "1938", "1951", "1966", "1972", "1988", "1759",
         "1801", "1835", "1858", "1877", "1912", "1944", "1979"]
CLUBS = ["poetry circle", "stamp club", "glee club", "kite society", "beekeepers' guild", "film society",
         "walking group", "model railway club", "choir", "knitting circle", "astronomy society", "chess circle",
         "rambling club", "pottery guild", "book club", "garden club", "radio club", "folk dance troupe",
         "photography club", "quiz team"]
OOD_TEMPLATES = [
    ("Whenever the shed door sticks, {s} reaches for a {a}.", "Which tool does {s} grab when the shed door sticks?",
     (NAMES,), TOOLS),
    ("According to the logbook, the first bird {s} ever ringed was a {a}.",
     "What kind of bird did {s} ring first, according to the logbook?", (NAMES,), BIRDS),
    ("It was aboard an old {a} that {s} learnt to sail.", "On what sort of boat did {s} learn to sail?",
     (NAMES,), VESSELS),
    ("Records kept by the {s} show it was founded in {a}.", "In which year was the {s} founded?", (CLUBS,), YEARS),
]


# The NIAH harness's needles and answers (config/config.yaml tasks single, multi): evaluation-only.
CLASSIC = [
    {"needle": "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
     "question": "What is the best thing to do in San Francisco?", "answer": "sandwich"},
    {"needle": "Figs are one of the secret ingredients needed to build the perfect pizza.",
     "question": "What are the secret ingredients needed to build the perfect pizza?", "answer": "figs"},
    {"needle": "Prosciutto is one of the secret ingredients needed to build the perfect pizza.",
     "question": "What are the secret ingredients needed to build the perfect pizza?", "answer": "prosciutto"},
    {"needle": "Goat cheese is one of the secret ingredients needed to build the perfect pizza.",
     "question": "What are the secret ingredients needed to build the perfect pizza?", "answer": "goat cheese"},
]
CLASSIC_ANSWERS = ("sandwich", "dolores park", "sunny", "figs", "prosciutto", "goat cheese", "pizza")

SIDES = ("train", "eval", "eval_ood")


def _norm(text: str) -> str:
    return " ".join(str(text).casefold().split())


def side(word: str, eval_fraction: float) -> str:
    """Which bank a subject or answer word belongs to: a fixed hash, independent of the seed and the lists."""
    h = int.from_bytes(hashlib.sha256(f"pausetune-bank-side|{_norm(word)}".encode()).digest()[:8], "big") / 2**64
    return "eval" if h < eval_fraction else "train"


def _candidates(which: str, eval_fraction: float) -> list[list[tuple[str, str, str]]]:
    """Per template, every (needle, question, answer) of one side, one answer per question (seed-free order). The
    out-of-template bank draws from OOD_TEMPLATES: any subject (names are not what it holds out), answer words of
    its own."""
    out = []
    templates = OOD_TEMPLATES if which == "eval_ood" else TEMPLATES
    own = which
    for needle, question, subjects, answers in templates:
        mine = [a for a in answers if (which == "eval_ood" or side(a, eval_fraction) == own)
                and _norm(a) not in CLASSIC_ANSWERS]
        keep = (lambda w: True) if which == "eval_ood" else (lambda w: side(w, eval_fraction) == own)
        if len(subjects) == 1:
            subs = [(s,) for s in subjects[0] if keep(s)]
        else:
            subs = [(s, d) for s in subjects[0] for d in subjects[1] if keep(s) and keep(d)]
        rows = []
        for i, sub in enumerate(subs):
            if not mine:
                break
            kw = {"s": sub[0], **({"d": sub[1]} if len(sub) > 1 else {})}
            a = mine[i % len(mine)]
            rows.append((needle.format(a=a, **kw), question.format(**kw), a))
        out.append(rows)
    return out


def generate(which: str, size: int, seed: int, eval_fraction: float = 0.25) -> list[dict]:
    """`size` distinct triples of one side, a seeded round-robin draw over the templates."""
    if which not in SIDES:
        raise PausetuneError(f"needle bank '{which}': expected one of {SIDES}")
    per_template = _candidates(which, eval_fraction)
    capacity = sum(len(r) for r in per_template)
    if size > capacity:
        raise PausetuneError(f"config key 'banks.{which}.size': {size} triples asked, the templates and word lists "
                             f"make only {capacity} for this bank (banks.eval_fraction {eval_fraction})")
    rng = random.Random(f"pausetune-bank|{seed}|{which}")
    pools = []
    for rows in per_template:
        rows = list(rows)
        rng.shuffle(rows)
        pools.append(rows)
    order = list(range(len(pools)))
    rng.shuffle(order)
    out: list[dict] = []
    while len(out) < size:
        for t in order:
            if pools[t] and len(out) < size:
                n, q, a = pools[t].pop()
                out.append({"needle": n, "question": q, "answer": a})
    return out


def _extra(config: dict, which: str) -> list[dict]:
    rows = getattr(BanksConfig.of(config), which)["extra"]
    for i, r in enumerate(rows):
        for key in ("needle", "question", "answer"):
            if not isinstance(r, dict) or not str(r.get(key) or "").strip():
                raise PausetuneError(f"config key 'banks.{which}.extra[{i}].{key}': required (a non-empty string)")
    return [{"needle": r["needle"], "question": r["question"], "answer": r["answer"]} for r in rows]


def bank(config: dict, which: str) -> list[dict]:
    """The training or evaluation bank of a config: generated triples, then the config's extra ones."""
    cfg = BanksConfig.of(config)
    rows = generate(which, getattr(cfg, which)["size"], config["seed"], cfg.eval_fraction) + _extra(config, which)
    if not rows:
        raise PausetuneError(f"config key 'banks.{which}': the {'training' if which == 'train' else 'evaluation'} "
                             f"needle bank is empty (size 0 and no extra triples)")
    seen: set[str] = set()
    for r in rows:
        if _norm(r["needle"]) in seen:
            raise PausetuneError(f"config key 'banks.{which}': needle {quote(r['needle'])} appears twice")
        seen.add(_norm(r["needle"]))
    return rows


def bank_hash(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _eval_only(config: dict) -> list[tuple[str, str, str]]:
    """(needle, answer, where) of everything the evaluation may ask: the eval bank, classics, fixed task needles."""
    out = [(r["needle"], r["answer"], "the evaluation bank") for r in bank(config, "eval")]
    out += [(r["needle"], r["answer"], "the classic harness needles (evaluation-only)") for r in CLASSIC]
    out += [("", a, "the classic harness needles (evaluation-only)") for a in CLASSIC_ANSWERS]
    for name, spec in config["tasks"].items():
        if spec.get("kind") in ("single", "multi") and not spec.get("bank"):
            facts = [f for per in spec.get("expected") or [] for f in per]
            for n in spec.get("needles") or []:
                out += [(n, "", f"task '{name}'")]
            out += [("", alt, f"task '{name}'") for f in facts for alt in str(f).split("|")]
    return out


def template_pattern(needle_template: str):
    """A training template as a regex over needles: its fixed words literal, each {slot} any words."""
    import re

    parts = re.split(r"\{[a-z]\}", needle_template)
    return re.compile("^" + "(.+?)".join(re.escape(_norm(p)) for p in parts) + "$")


def check_template_split(config: dict) -> list[dict]:
    """The out-of-template bank shares no sentence shape and no answer word with training: no needle of it fits a
    training template, no answer of it is a training answer. One line naming the key; returns the bank."""
    ood = bank(config, "eval_ood")
    patterns = [(t[0], template_pattern(t[0])) for t in TEMPLATES]
    train_answers = {_norm(r["answer"]) for r in bank(config, "train")} | {_norm(a) for t in TEMPLATES for a in t[3]}
    n_extra = len(_extra(config, "eval_ood"))
    for i, r in enumerate(ood):
        key = f"banks.eval_ood.extra[{i - (len(ood) - n_extra)}]" if i >= len(ood) - n_extra else "banks.eval_ood"
        for text, pat in patterns:
            if pat.match(_norm(r["needle"])):
                raise PausetuneError(f"config key '{key}': needle {quote(r['needle'])} has the shape of training "
                                     f"template {quote(text)}; the out-of-template bank must not")
        if _norm(r["answer"]) in train_answers:
            raise PausetuneError(f"config key '{key}': answer {quote(r['answer'])} is a training answer word; the "
                                 f"out-of-template bank must not share one")
    return ood


def task_bank(config: dict, which) -> list[dict]:
    """The bank a task with `bank: which` draws its cells from (true means the in-template evaluation bank), checked."""
    if which is True or which == "eval":
        return check_banks(config)[1]
    if which == "eval_ood":
        check_banks(config)
        return check_template_split(config)
    if which == "associations":
        from .associations import association_items

        return [{k: r[k] for k in ("needle", "question", "answer")}
                for r in association_items(BanksConfig.of(config).associations["size"], config["seed"])]
    raise PausetuneError(f"task bank '{which}': expected true, eval, eval_ood or associations")


def check_banks(config: dict) -> tuple[list[dict], list[dict]]:
    """Both banks, after the checks: non-empty, and no training triple shares a needle or an answer with anything
    the evaluation asks. One line naming the key; returns (train bank, eval bank)."""
    train = bank(config, "train")
    evalb = bank(config, "eval")
    needles, answers = {}, {}
    for n, a, where in _eval_only(config):
        if n:
            needles.setdefault(_norm(n), where)
        if a:
            answers.setdefault(_norm(a), where)
    for i, r in enumerate(train):
        key = "banks.train.extra" if i >= len(train) - len(_extra(config, "train")) else "banks.train"
        if _norm(r["needle"]) in needles:
            raise PausetuneError(f"config key '{key}': training needle {quote(r['needle'])} is also in "
                                 f"{needles[_norm(r['needle'])]}; the banks must be disjoint")
        if _norm(r["answer"]) in answers:
            raise PausetuneError(f"config key '{key}': training answer {quote(r['answer'])} is also an answer of "
                                 f"{answers[_norm(r['answer'])]}; the banks must be disjoint")
    return train, evalb
