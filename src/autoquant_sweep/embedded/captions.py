"""Deterministic COCO-style caption corpus built from seeded templates.

Every caption is lowercase ASCII, ends with `` .`` and is produced by a local
``random.Random`` instance (the global RNG is never touched), so the same seed
always yields the same list on every platform and Python version >= 3.10.
"""

from __future__ import annotations

import random

__all__ = [
    "CAPTION_SUBSET_SIZES",
    "HELDOUT_CAPTION_COUNT",
    "HELDOUT_OFFSET",
    "TRAIN_CAPTION_COUNT",
    "generate_captions",
    "generate_heldout_captions",
    "generate_training_captions",
]

#: Sizes of the nested evaluation/calibration subsets (first N lines of one list).
CAPTION_SUBSET_SIZES: dict[str, int] = {"small": 16, "medium": 128, "large": 512}

#: The held-out evaluation split: the ``HELDOUT_CAPTION_COUNT`` captions that follow the largest subset
#: in the same seeded stream (indices 512..575). No subset (calibration / scoring) and no training
#: step ever sees them. Generated on demand, not written to the cache, so the embedded files (and
#: their hashes) stay exactly as they were.
HELDOUT_OFFSET = max(CAPTION_SUBSET_SIZES.values())
HELDOUT_CAPTION_COUNT = 64

#: Number of captions in the (separately seeded) training corpus.
TRAIN_CAPTION_COUNT = 4000

# Subject categories: (singular, plural) nouns, category-specific actions and places.
_SUBJECTS: dict[str, dict[str, list]] = {
    "animal": {
        "nouns": [
            ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"),
            ("cow", "cows"), ("sheep", "sheep"), ("bear", "bears"), ("zebra", "zebras"),
            ("giraffe", "giraffes"), ("elephant", "elephants"), ("duck", "ducks"), ("goat", "goats"),
        ],
        "actions": [
            ("running", "on"), ("sleeping", "on"), ("standing", "in"), ("eating grass", "in"),
            ("walking", "through"), ("playing", "in"), ("resting", "under"), ("looking", "at"),
            ("drinking water", "near"), ("lying", "on"),
        ],
        "places": [
            "beach", "field", "park", "forest", "river", "meadow", "yard", "barn", "hill", "road",
        ],
        "attrs": ["small", "large", "young", "old", "fluffy", "hungry", "sleepy", "wild"],
    },
    "person": {
        "nouns": [
            ("man", "men"), ("woman", "women"), ("child", "children"), ("boy", "boys"),
            ("girl", "girls"), ("person", "people"), ("skier", "skiers"), ("surfer", "surfers"),
            ("player", "players"), ("chef", "chefs"),
        ],
        "actions": [
            ("riding a bike", "on"), ("holding an umbrella", "on"), ("throwing a frisbee", "in"),
            ("flying a kite", "on"), ("reading a book", "in"), ("eating a sandwich", "in"),
            ("talking on a phone", "near"), ("walking", "along"), ("sitting", "on"),
            ("playing tennis", "on"), ("cooking food", "in"), ("waiting", "at"),
        ],
        "places": [
            "street", "kitchen", "court", "beach", "park", "sidewalk", "station", "room", "bench",
            "field", "market", "bridge",
        ],
        "attrs": ["young", "old", "tall", "smiling", "happy", "tired", "busy", "little"],
    },
    "vehicle": {
        "nouns": [
            ("car", "cars"), ("bus", "buses"), ("truck", "trucks"), ("train", "trains"),
            ("bicycle", "bicycles"), ("motorcycle", "motorcycles"), ("boat", "boats"),
            ("airplane", "airplanes"),
        ],
        "actions": [
            ("parked", "on"), ("driving", "down"), ("stopped", "at"), ("moving", "along"),
            ("waiting", "at"), ("passing", "under"), ("sitting", "in"),
        ],
        "places": [
            "street", "road", "station", "bridge", "harbor", "runway", "lot", "track", "city",
            "highway",
        ],
        "attrs": ["old", "new", "large", "small", "shiny", "dirty", "empty", "fast"],
    },
    "object": {
        "nouns": [
            ("plate of food", "plates of food"), ("pizza", "pizzas"), ("cake", "cakes"),
            ("vase of flowers", "vases of flowers"), ("laptop", "laptops"), ("clock", "clocks"),
            ("bowl of fruit", "bowls of fruit"), ("teddy bear", "teddy bears"), ("chair", "chairs"),
            ("umbrella", "umbrellas"),
        ],
        "actions": [
            ("sitting", "on"), ("placed", "on"), ("left", "on"), ("displayed", "in"),
            ("resting", "on"), ("lying", "next to"),
        ],
        "places": [
            "table", "counter", "desk", "shelf", "window", "floor", "bed", "tray", "sofa", "cabinet",
        ],
        "attrs": ["small", "large", "wooden", "round", "empty", "fresh", "broken", "tiny"],
    },
}

_COLOURS = [
    "red", "blue", "green", "yellow", "white", "black", "brown", "gray", "orange", "pink", "purple",
]
_PLACE_ATTRS = [
    "sandy", "grassy", "busy", "quiet", "wooden", "crowded", "empty", "wet", "sunny", "snowy", "large",
    "small", "white", "dark",
]
_COUNTS = ["two", "three", "four", "several", "many", "a group of", "a few"]
_TIMES = ["", "", "", "", " at night", " during the day", " in the morning", " on a sunny day",
          " in the rain", " at sunset"]
_CATEGORY_ORDER = ["animal", "person", "vehicle", "object"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: random.Random, nouns: list[tuple[str, str]], attrs: list[str]) -> tuple[str, bool]:
    """Return ``(phrase, plural)`` such as ``"a small brown dog"`` or ``"two black cats"``."""
    singular, plural_form = rng.choice(nouns)
    words: list[str] = []
    if rng.random() < 0.6:
        words.append(rng.choice(attrs))
    if rng.random() < 0.5:
        words.append(rng.choice(_COLOURS))
    if rng.random() < 0.3:
        head = " ".join([rng.choice(_COUNTS), *words, plural_form])
        return head, True
    body = " ".join([*words, singular])
    return f"{_article(body)} {body}", False


def _place_phrase(rng: random.Random, places: list[str]) -> str:
    place = rng.choice(places)
    if rng.random() < 0.5:
        place = f"{rng.choice(_PLACE_ATTRS)} {place}"
    determiner = _article(place) if rng.random() < 0.6 else "the"
    return f"{determiner} {place}"


def _one_caption(rng: random.Random) -> str:
    spec = _SUBJECTS[rng.choice(_CATEGORY_ORDER)]
    subject, plural = _noun_phrase(rng, spec["nouns"], spec["attrs"])
    action, prep = rng.choice(spec["actions"])
    place = _place_phrase(rng, spec["places"])
    time = rng.choice(_TIMES)
    form = rng.random()
    if form < 0.55:
        text = f"{subject} {action} {prep} {place}{time}"
    elif form < 0.8:
        verb = "are" if plural else "is"
        text = f"{subject} {verb} {action} {prep} {place}{time}"
    elif form < 0.9:
        text = f"there {'are' if plural else 'is'} {subject} {action} {prep} {place}"
    else:
        other = _SUBJECTS[rng.choice(_CATEGORY_ORDER)]
        second, _ = _noun_phrase(rng, other["nouns"], other["attrs"])
        text = f"{subject} and {second} {prep} {place}{time}"
    return f"{text} ."


def _generate(n: int, rng: random.Random) -> list[str]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_one_caption(rng) for _ in range(n)]


def generate_captions(n: int, seed: int) -> list[str]:
    """Return ``n`` evaluation/calibration captions for ``seed`` (prefixes are stable as ``n`` grows).

    >>> generate_captions(2, 0) == generate_captions(2, 0)
    True
    """
    return _generate(n, random.Random(seed))


def generate_training_captions(n: int = TRAIN_CAPTION_COUNT, seed: int = 0) -> list[str]:
    """Return ``n`` training captions from a stream independent of :func:`generate_captions`."""
    # String seeds are hashed with SHA-512 by ``random`` (independent of PYTHONHASHSEED).
    return _generate(n, random.Random(f"autoquant-sweep/train/{seed}"))


def generate_heldout_captions(seed: int = 0, n: int = HELDOUT_CAPTION_COUNT) -> list[str]:
    """The held-out evaluation captions of ``seed``: ``generate_captions(512 + n, seed)[512:]``.

    >>> len(generate_heldout_captions(0)), generate_heldout_captions(0)[0] == generate_captions(513, 0)[512]
    (64, True)
    """
    return generate_captions(HELDOUT_OFFSET + n, seed)[HELDOUT_OFFSET:]
