"""Paragraph splitting: the `pausetune paragraphs` stage.

The paper (arXiv 2502.20405) inserts a pause token after every paragraph (the shards, examples and eval haystack
do, from these paragraphs) but does not say how paragraphs are found, so the method is a config axis
(`paragraphs.method`):

blank_lines
    A paragraph is a run of text between blank lines, as a clean corpus marks them; hard wraps inside
    it become spaces. Fragments under min_words words are merged as in heuristic rule 8.

heuristic (default)
    What the 49 Paul Graham essays of the NIAH harness need. Their text was scraped from HTML that marked
    paragraphs with <br><br>; the scrape dropped the tags, so most paragraph breaks vanished and the
    source's hard wraps remain. The rules, each matched against that text:
    1. Blank lines split (as in blank_lines).
    2. A single newline never splits by itself: it is a hard wrap (exceptions: rules 6 and 7). A rule
       "a line notably shorter than the wrap width, ending a sentence, followed by an uppercase line" was
       measured on the 49 essays and rejected: such lines often end early only because the HTML source
       broke around a link ("a startup called\\nViaweb.\\nOur plan was", "a business plan for a\\nnew
       language.\\nSo it is missing"), so it split mid-paragraph in several essays (avg, popular, gba).
    3. A collapsed break: a sentence end (. ? ! with optional closing quotes/parens/brackets) glued with
       no whitespace to the next sentence's start (an uppercase letter, or an opening quote, paren or
       bracket before one, or a digit after a word: "2. Design", "99.5% of"): "accelerating.We",
       "enterprise.)It".
       Not a sentence end: initials and dotted abbreviations (U.S., e.g., i.e., P.G.), titles (Mr., Dr.),
       an ellipsis not followed by a closing quote ("wait...What"), anything inside a URL
       (http://a.b/C.D), a digit after a digit or a roman numeral (3.5, "Martial vi.66"). Domains
       (ycombinator.com) never match: no uppercase follows.
    4. A straight quote right after the punctuation closes the sentence when the quotes since the last
       break are unbalanced, else it opens the next paragraph: 'listened."Why' splits after the quote,
       'on a YC startup."What happened' before it.
    5. Footnote marks belong to the sentence before them. In the body a break glued after a mark splits
       after the mark ("accelerating.\\n[1]No one" -> "... accelerating. [1]" | "No one ..."); a mark
       followed by whitespace does not split (the essays continue the paragraph there: "a minicomputer.
       [3] Microsoft likewise ..."). After the "Notes" heading the marks number the notes, so there each
       mark that follows a sentence end starts a new paragraph ("good.[2]\\nTechnology" -> "... good." |
       "[2] Technology ..."), and the heading itself is cut off.
    6. A date header glued to the first sentence splits after the date ("July 2010What" -> "July 2010"
       | "What"); a "* * *" separator splits (and is merged into the next paragraph, rule 8); the
       acknowledgment line ("Thanks to ...") starting a line after a sentence end splits.
    7. Section headings were glued to their first sentence ("SirensWhat you", "2. FlexibilityYou"). The
       heading is not cut off (it cannot be told from camel case: "FarmVille"), but a sentence end followed
       by whitespace and then such a heading (a capitalized word running into a sentence starter such as
       The/What's/I/So) is a paragraph break: "about 20,000.\\nThe Blub ParadoxWhat's so great".
    8. Fragments shorter than min_words words (the date, a "Notes" heading, a one-line quote intro) are
       merged into the following paragraph, or into the previous one when last: a pause after two words
       teaches nothing about paragraphs.

brackets
    The authors' evaluation haystack (PauseTokens_NeedleInAHaystack): a pause after every `]`, i.e. after each of
    Paul Graham's footnote marks ("[1]"), not after paragraphs. A piece ends right after each `]`; the text after
    the last one is the last piece (an essay without marks is one piece). No min_words merging. Our streams put a
    pause after every piece, so the last piece of an essay is followed by one too (the authors' has none there).

sentences:N
    Pseudo-paragraphs of N consecutive sentences, for the ablation "is it the paragraph structure or just
    regularly spaced markers?". Sentences are cut where the heuristic cuts, plus at every spaced sentence
    end (same punctuation and the same exceptions). No min_words merging: the spacing stays regular.

Within a paragraph all whitespace runs (hard wraps, indentation, double spaces) become one space, so
" ".join(paragraphs) has the same non-whitespace characters, in order, as the input.
"""
from __future__ import annotations

import bisect
import re
import statistics

from ..core.io import PausetuneError, read_parquet, write_json, write_parquet

# ---------------------------------------------------------------------------------------------------------
# Regexes

# One or more blank lines (lines holding only spaces count as blank).
BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")

# A footnote reference as the essays write it: [1] ... [19].
MARK = r"\[\d{1,3}\]"

# A sentence end followed by the start of another sentence, glued or not. Groups: `end` the terminal
# punctuation (runs like ?! or ... included), `close` closing quotes/parens/brackets, `marks` footnote
# references (with any whitespace before each), `space` the whitespace before the next sentence (empty:
# a collapsed paragraph break). The lookahead is the next sentence's start: an uppercase letter, maybe
# after an opening quote/paren/bracket, or a digit ("2. Design", "99.5% of"; see _is_sentence_end).
SENTENCE_END = re.compile(
    rf"""
    (?<=\S)                                       # punctuation attached to a word, not "in\n!MSFT"
    (?P<end>[.?!]+|…)
    (?P<close>["”’')\]]*)
    (?P<marks>(?:\s*{MARK})*)
    (?P<space>\s*)
    (?=["“‘(\[]?[A-Z]|\d)
    """,
    re.VERBOSE,
)

# The word before a "." that is then not a sentence end (each is matched against that whole word). A
# dotted abbreviation (U.S, e.g, i.e, P.G, T.H) never ends a sentence; a single letter does not either
# when a dotted abbreviation continues after it ("U." in "U.S."), nor, at a spaced end, when it is an
# uppercase initial ("E. B. White", "I. Kant"; a glued "C.Another" is the language C). Titles and citation
# words never do (Mr., Dr., p. 92), nor does anything inside a URL (http://a.b/C.D).
DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
DOTTED_NEXT = re.compile(r"[A-Za-z]\.")
TITLES = {"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "vs", "cf", "p", "pp", "vol", "op", "ca"}
URL = re.compile(r"(?:https?://|www\.)\S*")
# A lowercase roman numeral, as in citations ("Sat. ii.7.43", "Martial vi.66"): no sentence end before a digit.
ROMAN = re.compile(r"[ivxlcdm]+")

# "Notes" heading before the first footnote ("Notes[1]", "Notes\n[1]"); the last one in the essay counts.
NOTES = re.compile(r"\bNotes(?=\s*\[\w{1,3}\])")

# A section heading run straight into its first sentence, as the scrape left them: "TreesWhat's so",
# "The Blub ParadoxWhat's", "2. FlexibilityYou". Only the heading's start is matched, and only before a
# sentence-starting word, so brand names at a sentence start ("VisiCalc made", "GeoCities") do not match.
STARTERS = (
    "A|An|And|Another|As|At|But|By|For|How|However|I|If|In|It|It's|Let's|Most|No|Now|Of|On|One|Should|So|"
    "Some|That|The|There|There's|These|This|Though|To|We|What|What's|When|Where|Whatever|Which|Who|Why|"
    "With|You"
)
HEADING = re.compile(rf"(?:\d{{1,2}}\.?[ \t]+)?(?:[A-Z][\w'-]*[ \t]+){{0,3}}[A-Z][a-z]{{2,}}(?:{STARTERS})\b")

# A section separator line, "* * *" (glued on both sides in the scrape).
SEPARATOR = re.compile(r"\*[ \t]*\*[ \t]*\*")

# A date header glued to the first sentence: "July 2010What", "January 2003(This article".
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATE_HEADER = re.compile(rf"\b(?:{MONTHS}) \d{{4}}(?=[\"“(\[]?[A-Z])")


# ---------------------------------------------------------------------------------------------------------
# Finding cuts


def _is_sentence_end(text: str, m: re.Match) -> bool:
    end, start = m.group("end"), m.start("end")
    before = text[max(0, start - 200) : start].split()
    word = before[-1] if before else ""
    if URL.match(word):
        return False
    word = word.lstrip("([\"“‘")
    closed = m.group("close") or m.group("marks")
    if (end.count(".") >= 2 or "…" in end) and not closed:
        return False  # an ellipsis mid-sentence: "wait...What", "like ... Google"
    if end == "." and not closed:
        if DOTTED.fullmatch(word) or word in TITLES:
            return False  # "U.S.The", "e.g. The", "Mr. Beeton"
        if len(word) == 1 and word.isalpha() and DOTTED_NEXT.match(text, m.end()):
            return False  # the "U." of "U.S."
        if m.group("space") and len(word) == 1 and word.isupper():
            return False  # "E. B. White"
    if text[m.end()].isdigit() and not closed and (not word[-1:].isalpha() or ROMAN.fullmatch(word)):
        return False  # a digit starts a sentence only after a word: "done.99.5% of", not "3.5", "vi.66"
    return True


def _stop(text: str, m: re.Match, since: int) -> int:
    """Offset just after the sentence that m ends, closers and marks included. A straight quote closes
    only if the quotes since the last paragraph cut are unbalanced; else it opens the next sentence
    ('on a YC startup."What happened' is cut before the quote, 'I wish we'd listened."Why' after it)."""
    inside = text.count('"', since, m.start("close")) % 2 == 1
    for i in range(m.start("close"), m.end("close")):
        if text[i] == '"':
            if not inside:
                return i
            inside = False
    return m.end("marks")


def _cuts(text: str, sentences: bool) -> list[int]:
    """Character offsets where the text is cut: paragraph breaks, plus every sentence end if `sentences`."""
    fixed = [m.start() for m in BLANK_LINES.finditer(text)]
    fixed += [m.end() for m in DATE_HEADER.finditer(text)]
    fixed += [i for m in SEPARATOR.finditer(text) for i in m.span()]  # merged into the next paragraph
    notes = list(NOTES.finditer(text))
    notes_at = notes[-1].start() if notes else len(text)
    if notes:
        fixed += [notes[-1].start(), notes[-1].end()]  # the heading alone; merged into the first note
    fixed.sort()
    cuts, last = list(fixed), 0  # last: the latest paragraph cut, where quote counting restarts
    for m in SENTENCE_END.finditer(text):
        if not _is_sentence_end(text, m):
            continue
        k = bisect.bisect_right(fixed, m.start())
        last = max(last, fixed[k - 1] if k else 0)
        if m.start() >= notes_at and m.group("marks"):
            cut = m.start("marks")  # a note starts with its mark
        elif not m.group("space"):
            cut = _stop(text, m, last)  # a collapsed break; marks end the previous paragraph
        elif HEADING.match(text, m.end()):
            cut = m.end("marks")  # a section heading starts a paragraph
        elif "\n" in m.group("space") and text.startswith("Thanks to ", m.end()):
            cut = m.end("marks")  # the acknowledgment line
        elif sentences:
            cuts.append(_stop(text, m, last))  # a sentence end, not a paragraph break
            continue
        else:
            continue
        cuts.append(cut)
        last = cut
    return sorted(set(cuts))


def _pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    pieces = (" ".join(text[a:b].split()) for a, b in zip(bounds, bounds[1:]))
    return [p for p in pieces if p]


def merge_short(pieces: list[str], min_words: int) -> list[str]:
    """Merge pieces of fewer than min_words words into the next piece (the previous one when last)."""
    out: list[str] = []
    carry = ""
    for piece in pieces:
        piece = f"{carry} {piece}" if carry else piece
        if len(piece.split()) < min_words:
            carry = piece
        else:
            out.append(piece)
            carry = ""
    if carry:
        if out:
            out[-1] = f"{out[-1]} {carry}"
        else:
            out.append(carry)
    return out


def split_sentences(text: str) -> list[str]:
    """The sentence segmentation used by sentences:N (and, for its glued ends, by the heuristic)."""
    return _pieces(text, _cuts(text, sentences=True))


# ---------------------------------------------------------------------------------------------------------
# Public API


def _parse_method(method: str) -> tuple[str, int]:
    if method in ("blank_lines", "heuristic", "brackets"):
        return method, 0
    name, _, n = method.partition(":")
    if name == "sentences" and n.isdigit() and int(n) >= 1:
        return name, int(n)
    raise PausetuneError(
        f"paragraphs.method: unknown method '{method}'; expected blank_lines, heuristic, brackets or sentences:N"
    )


def split_paragraphs(text: str, method: str = "heuristic", min_words: int = 8) -> list[str]:
    """Split one essay into paragraphs (each non-empty, whitespace-normalized); see the module docstring."""
    name, n = _parse_method(method)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # so that blank lines look the same everywhere
    if name == "blank_lines":
        pieces = [" ".join(block.split()) for block in BLANK_LINES.split(text)]
        return merge_short([p for p in pieces if p], min_words)
    if name == "heuristic":
        return merge_short(_pieces(text, _cuts(text, sentences=False)), min_words)
    if name == "brackets":
        pieces = [" ".join(p.split()) for p in re.split(r"(?<=\])", text)]
        return [p for p in pieces if p]
    sents = split_sentences(text)
    return [" ".join(sents[i : i + n]) for i in range(0, len(sents), n)]


def paragraph_stats(paragraph_lists: list[list[str]]) -> dict:
    """Counts and words-per-paragraph over a corpus given as one paragraph list per essay."""
    words = [len(p.split()) for paras in paragraph_lists for p in paras]
    per_essay = [len(paras) for paras in paragraph_lists]
    return {
        "essays": len(paragraph_lists),
        "paragraphs": len(words),
        "paragraphs_per_essay_mean": round(statistics.fmean(per_essay), 3) if per_essay else 0.0,
        "words_per_paragraph_mean": round(statistics.fmean(words), 3) if words else 0.0,
        "words_per_paragraph_median": float(statistics.median(words)) if words else 0.0,
        "words_per_paragraph_min": min(words, default=0),
        "words_per_paragraph_max": max(words, default=0),
    }


# ---------------------------------------------------------------------------------------------------------
# Stage I/O: `pausetune paragraphs`

COLUMNS = ["id", "title", "text", "sha256"]


def add_arguments(p) -> None:
    p.add_argument("--input", required=True, help="data/raw/{source}.parquet (columns id, title, text, sha256)")
    p.add_argument("--output", required=True, help="data/paragraphs/{source}/{method}.parquet")
    p.add_argument("--stats", required=True, help="JSON file for the paragraph statistics")
    p.add_argument("--method", default=None, help="overrides config paragraphs.method")


def main(args, config: dict) -> int:
    method = args.method or config["paragraphs"]["method"]
    min_words = config["paragraphs"]["min_words"]
    _parse_method(method)  # fail on a bad --method before reading anything

    df = read_parquet(args.input, columns=COLUMNS)[COLUMNS].copy()
    paragraphs = []
    for essay_id, text in zip(df["id"], df["text"]):
        paras = split_paragraphs(text or "", method, min_words)
        if not paras:
            raise PausetuneError(f"{args.input}: essay '{essay_id}' has no paragraphs (empty text)")
        paragraphs.append(paras)
    df["paragraphs"] = paragraphs
    df["n_paragraphs"] = [len(p) for p in paragraphs]

    stats = {"method": method, "min_words": min_words, **paragraph_stats(paragraphs)}
    write_parquet(args.output, df)
    write_json(args.stats, stats)
    print(
        f"paragraphs: {stats['essays']} essays -> {stats['paragraphs']} paragraphs ({method}, min_words={min_words}, "
        f"median {stats['words_per_paragraph_median']} words) -> {args.output}"
    )
    return 0
