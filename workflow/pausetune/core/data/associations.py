"""Low-overlap needles (issue #28): the question shares no content word with the needle, and the answer follows by
one association step. The needle places a person at a landmark; the question names the landmark's city and asks
who has been there; the answer is the person. A model that matches words between question and needle finds
nothing to match; it has to know where the landmark stands.

Written for this project (templates, names and the landmark list below), not taken from any benchmark. Every
item is checked by `content_words`: lower-cased word tokens minus the STOP_WORDS list (function words only), and
no word of a question may occur in its needle (tests/test_associations.py checks every template x landmark).
"""
from __future__ import annotations

import random
import re

from ..io import PausetuneError

# (landmark as it reads in a sentence, the city it stands in); no landmark names its city.
LANDMARKS = [
    ("the Eiffel Tower", "Paris"), ("the Louvre", "Paris"), ("Notre-Dame Cathedral", "Paris"),
    ("the Arc de Triomphe", "Paris"), ("the Colosseum", "Rome"), ("the Trevi Fountain", "Rome"),
    ("the Spanish Steps", "Rome"), ("the Pantheon", "Rome"), ("Big Ben", "London"), ("Tower Bridge", "London"),
    ("the British Museum", "London"), ("the Brandenburg Gate", "Berlin"), ("the Reichstag", "Berlin"),
    ("Checkpoint Charlie", "Berlin"), ("the Sagrada Familia", "Barcelona"), ("Park Guell", "Barcelona"),
    ("La Rambla", "Barcelona"), ("the Statue of Liberty", "New York"), ("the Golden Gate Bridge", "San Francisco"),
    ("the Space Needle", "Seattle"), ("the Gateway Arch", "St. Louis"), ("Bondi Beach", "Sydney"),
    ("the Little Mermaid statue", "Copenhagen"), ("the Tivoli Gardens", "Copenhagen"), ("the Atomium", "Brussels"),
    ("the Manneken Pis", "Brussels"), ("the Acropolis", "Athens"), ("the Parthenon", "Athens"),
    ("the Blue Mosque", "Istanbul"), ("the Hagia Sophia", "Istanbul"), ("the Galata Tower", "Istanbul"),
    ("the Kremlin", "Moscow"), ("St. Basil's Cathedral", "Moscow"), ("Red Square", "Moscow"),
    ("the Hermitage Museum", "St. Petersburg"), ("the Charles Bridge", "Prague"),
    ("the astronomical clock on the Old Town Square", "Prague"), ("Schonbrunn Palace", "Vienna"),
    ("the Rijksmuseum", "Amsterdam"), ("the Alhambra", "Granada"), ("the Prado Museum", "Madrid"),
    ("the Belem Tower", "Lisbon"), ("the Leaning Tower", "Pisa"), ("the Rialto Bridge", "Venice"),
    ("St. Mark's Basilica", "Venice"), ("the Doge's Palace", "Venice"), ("the Ponte Vecchio", "Florence"),
    ("the Uffizi Gallery", "Florence"), ("the Royal Mile", "Edinburgh"), ("the Forbidden City", "Beijing"),
    ("the Bund", "Shanghai"), ("Victoria Peak", "Hong Kong"), ("the Star Ferry", "Hong Kong"),
    ("Marina Bay Sands", "Singapore"), ("the Petronas Towers", "Kuala Lumpur"), ("Wat Arun", "Bangkok"),
    ("Angkor Wat", "Siem Reap"), ("the Taj Mahal", "Agra"), ("the Gateway of India", "Mumbai"),
    ("the Burj Khalifa", "Dubai"), ("the Khan el-Khalili bazaar", "Cairo"), ("Table Mountain", "Cape Town"),
    ("the Christ the Redeemer statue", "Rio de Janeiro"), ("Sugarloaf Mountain", "Rio de Janeiro"),
    ("the Copacabana promenade", "Rio de Janeiro"), ("the CN Tower", "Toronto"),
    ("the Chateau Frontenac", "Quebec City"), ("the Hollywood Sign", "Los Angeles"), ("the Alamo", "San Antonio"),
    ("the Liberty Bell", "Philadelphia"), ("the Lincoln Memorial", "Washington"),
    ("the French Quarter", "New Orleans"), ("the Cloud Gate sculpture", "Chicago"),
    ("the Bellagio fountains", "Las Vegas"), ("Marienplatz", "Munich"), ("the Hofbrauhaus", "Munich"),
    ("the Elbphilharmonie", "Hamburg"), ("the Frauenkirche", "Dresden"), ("the Zwinger palace", "Dresden"),
    ("the Mezquita", "Cordoba"), ("the Real Alcazar", "Seville"), ("the Vasa Museum", "Stockholm"),
    ("Gamla Stan", "Stockholm"), ("the Vigeland sculpture park", "Oslo"), ("the Hallgrimskirkja", "Reykjavik"),
    ("the Temppeliaukio rock church", "Helsinki"), ("the Szechenyi thermal baths", "Budapest"),
    ("Wawel Castle", "Krakow"), ("the Palace of Culture and Science", "Warsaw"),
    ("the Guinness Storehouse", "Dublin"), ("the Book of Kells", "Dublin"), ("the Royal Crescent", "Bath"),
    ("the Cavern Club", "Liverpool"), ("the Shambles", "York"), ("Shibuya Crossing", "Tokyo"),
    ("the Senso-ji temple", "Tokyo"), ("the Fushimi Inari shrine", "Kyoto"), ("the Golden Pavilion", "Kyoto"),
    ("the Atomic Bomb Dome", "Hiroshima"), ("the Todai-ji temple", "Nara"), ("Gyeongbokgung Palace", "Seoul"),
    ("the Shilin night market", "Taipei"), ("the Western Wall", "Jerusalem"), ("the Dome of the Rock", "Jerusalem"),
    ("the Jemaa el-Fnaa square", "Marrakesh"), ("the Hassan II Mosque", "Casablanca"),
    ("the Queen Victoria Market", "Melbourne"), ("the Sky Tower", "Auckland"), ("the Terracotta Army", "Xi'an"),
    ("the Potala Palace", "Lhasa"), ("the Hawa Mahal", "Jaipur"), ("the Charminar", "Hyderabad"),
    ("the Victoria Memorial", "Kolkata"), ("the Zocalo", "Mexico City"), ("the Obelisco", "Buenos Aires"),
]

# People of these needles: none is a name of the needle banks (core.data.banks.NAMES).
PEOPLE = ["Ansel", "Birgit", "Casimir", "Delphine", "Evander", "Fiora", "Gideon", "Halima", "Ignatius", "Jorunn",
          "Katya", "Leopold", "Marisol", "Nikolai", "Odile", "Percival", "Quillon", "Rosalind", "Soren", "Thandiwe",
          "Ulrich", "Valeska", "Wendeline", "Xavier", "Yolanda", "Zoltan", "Annelie", "Bartholomew", "Cordelia",
          "Desmond"]

# {person} and {landmark}: what the person did at the landmark, in words no question uses.
NEEDLE_TEMPLATES = [
    "{person} once spent a whole afternoon sketching {landmark}.",
    "{person} proposed to a childhood sweetheart right in front of {landmark}.",
    "{person} got caught in a sudden downpour while queueing outside {landmark}.",
    "{person} lost a favourite woollen scarf somewhere near {landmark}.",
    "{person} still keeps a faded postcard bought beside {landmark}.",
]
# {city}: the question asks who has been there.
QUESTION_TEMPLATES = [
    "Which person has been to {city}?",
    "Who has travelled to {city}?",
]

# Function words only: what `content_words` ignores.
STOP_WORDS = frozenset("""
a an the and or but if then of to in on at by for from with without into onto over under near beside outside
inside while once still right somewhere whole which who whom whose what when where why how has have had is are was
were be been being do does did this that these those it its there here as up down out off some any all each
""".split())


def content_words(text: str) -> set[str]:
    """Lower-cased word tokens of text (letters, digits, apostrophes inside words) that are not stop words."""
    return {w for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()) if w not in STOP_WORDS}


def association_items(size: int, seed: int) -> list[dict]:
    """A seeded draw of `size` low-overlap triples {needle, question, answer, landmark, city}: each landmark at most
    once, templates round-robin, one person per item (people reused only past their count)."""
    if size > len(LANDMARKS):
        raise PausetuneError(f"association items: {size} asked, {len(LANDMARKS)} landmarks written")
    rng = random.Random(f"associations/{seed}")
    marks = rng.sample(LANDMARKS, size)
    people = rng.sample(PEOPLE, len(PEOPLE))
    out = []
    for i, (landmark, city) in enumerate(marks):
        person = people[i % len(people)]
        needle = NEEDLE_TEMPLATES[i % len(NEEDLE_TEMPLATES)].format(person=person, landmark=landmark)
        question = QUESTION_TEMPLATES[i % len(QUESTION_TEMPLATES)].format(city=city)
        shared = content_words(needle) & content_words(question)
        if shared:  # the list and templates are checked by the tests; a later edit that breaks them stops here
            raise PausetuneError(f"association item {needle!r} / {question!r}: shares {sorted(shared)}")
        out.append({"needle": needle, "question": question, "answer": person, "landmark": landmark, "city": city})
    return out
