"""Low-overlap needles (issue #28): written in-house, at least 100, no content word shared between a question and
its needle under any template, disjoint from the needle banks, deterministic."""
from __future__ import annotations

import itertools

import pytest

from pausetune.core.data.associations import (LANDMARKS, NEEDLE_TEMPLATES, PEOPLE, QUESTION_TEMPLATES, STOP_WORDS,
                                              association_items, content_words)
from pausetune.core.data.banks import NAMES


def test_at_least_100_distinct_landmarks_none_naming_its_city():
    assert len(LANDMARKS) >= 100 and len({l for l, _ in LANDMARKS}) == len(LANDMARKS)
    for landmark, city in LANDMARKS:
        assert not content_words(landmark) & content_words(city), (landmark, city)


def test_no_question_shares_a_content_word_with_any_needle_it_can_meet():
    for (landmark, city), n, q, person in itertools.product(LANDMARKS, NEEDLE_TEMPLATES, QUESTION_TEMPLATES, PEOPLE):
        needle, question = n.format(person=person, landmark=landmark), q.format(city=city)
        assert not content_words(needle) & content_words(question), (needle, question)


def test_the_stop_word_list_holds_function_words_only():
    # a content word slipped into the list would hide an overlap: none of the templates' or items' nouns is in it
    nouns = {"person", "afternoon", "sweetheart", "downpour", "scarf", "postcard", "tower", "city", "bridge"}
    assert not nouns & STOP_WORDS
    assert content_words("Who has travelled to Quebec City?") == {"travelled", "quebec", "city"}


def test_people_are_not_bank_names_and_items_are_deterministic():
    assert not set(PEOPLE) & set(NAMES)
    a, b = association_items(100, seed=0), association_items(100, seed=0)
    assert a == b and a != association_items(100, seed=1)
    assert len({i["landmark"] for i in a}) == 100
    assert all(i["answer"] in i["needle"] and i["answer"] not in i["question"] for i in a)
    assert all(i["city"] in i["question"] and i["city"] not in i["needle"] for i in a)
    with pytest.raises(Exception, match="landmarks written"):
        association_items(len(LANDMARKS) + 1, seed=0)
