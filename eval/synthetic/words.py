"""Word sources for the RULER-style tasks, built in (no download).

RULER draws needle keys as "adjective-noun" pairs and common-word lists from the
``wonderwords`` lists, switching to a larger English word list when a long context needs more
distinct words. Here: small built-in adjective / noun / verb lists, and beyond them
pronounceable pseudo-words made of consonant-vowel syllables (distinct by construction).
"""

from __future__ import annotations

import random

__all__ = ["ADJECTIVES", "NOUNS", "VERBS", "distinct_words", "key_words"]

ADJECTIVES = [
    "able", "angry", "bitter", "black", "blue", "bold", "brave", "bright", "broken", "busy",
    "calm", "careful", "cheap", "clean", "clever", "cold", "cool", "curious", "dark", "deep",
    "dry", "eager", "early", "easy", "empty", "fair", "famous", "fancy", "fast", "fierce", "flat",
    "fresh", "friendly", "funny", "gentle", "giant", "golden", "good", "green", "happy", "heavy",
    "honest", "hungry", "jolly", "kind", "large", "lazy", "little", "lively", "loud", "lucky",
    "mighty", "modern", "narrow", "nervous", "noisy", "odd", "old", "orange", "plain", "polite",
    "proud", "purple", "quick", "quiet", "rapid", "rare", "red", "rich", "rough", "round", "royal",
    "rusty", "sad", "safe", "salty", "sharp", "shiny", "short", "silent", "silly", "simple",
    "slow", "small", "smooth", "soft", "solid", "sour", "spicy", "steep", "sticky", "strange",
    "strong", "sweet", "swift", "tall", "tame", "thick", "thin", "tidy", "tiny", "tough", "warm",
    "weak", "wet", "white", "wide", "wild", "wise", "yellow", "young"
]

NOUNS = [
    "acorn", "anchor", "apple", "arrow", "badge", "banana", "barn", "basket", "beach", "bell",
    "bicycle", "blanket", "boat", "bottle", "bridge", "brush", "bucket", "butter", "button",
    "cabin", "cactus", "camera", "candle", "canyon", "carpet", "castle", "cave", "chair", "cherry",
    "circle", "cloud", "clover", "coat", "comet", "compass", "cookie", "copper", "cottage",
    "crayon", "crown", "cup", "curtain", "daisy", "desert", "diamond", "dolphin", "door", "dragon",
    "drum", "eagle", "engine", "falcon", "feather", "fence", "field", "flag", "flute", "forest",
    "fountain", "fox", "garden", "giraffe", "glove", "goat", "guitar", "hammer", "harbor",
    "helmet", "honey", "island", "jacket", "jungle", "kettle", "kite", "ladder", "lamp", "lantern",
    "lemon", "lion", "magnet", "maple", "meadow", "mirror", "monkey", "mountain", "needle",
    "ocean", "orchard", "otter", "owl", "paddle", "palace", "panda", "parrot", "pebble", "pencil",
    "pepper", "piano", "pillow", "planet", "pocket", "pond", "puzzle", "rabbit", "radio", "river",
    "robot", "rocket", "saddle", "sailor", "shadow", "shell", "spoon", "squirrel", "star", "stone",
    "sugar", "teapot", "tiger", "tower", "tractor", "trumpet", "tulip", "tunnel", "turtle",
    "umbrella", "valley", "violin", "wagon", "walnut", "whale", "window", "wizard", "zebra"
]

VERBS = [
    "accept", "admire", "arrive", "bake", "balance", "borrow", "breathe", "build", "carry",
    "chase", "clap", "climb", "collect", "cook", "count", "crawl", "dance", "decide", "deliver",
    "dig", "dream", "drift", "explore", "fetch", "float", "fold", "gather", "glide", "grow",
    "guess", "hammer", "hike", "hop", "hunt", "imagine", "invent", "juggle", "jump", "kneel",
    "knit", "laugh", "lift", "listen", "march", "melt", "mend", "mix", "nod", "obey", "open",
    "paint", "plant", "play", "polish", "pour", "pull", "push", "race", "reach", "read", "repair",
    "rescue", "rest", "ride", "roll", "row", "run", "sail", "scatter", "search", "shine", "sing",
    "skip", "sleep", "slide", "smile", "sneeze", "spin", "splash", "stack", "stir", "swim",
    "swing", "talk", "throw", "travel", "trust", "wander", "wash", "watch", "whisper", "wiggle",
    "write", "yawn"
]

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]          # 70 syllables


def key_words(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct "adjective-noun" keys (RULER's ``type_needle_k='words'``)."""
    pairs = len(ADJECTIVES) * len(NOUNS)
    if n > pairs:
        raise ValueError(f"at most {pairs} distinct word keys, asked for {n}")
    return [f"{ADJECTIVES[i // len(NOUNS)]}-{NOUNS[i % len(NOUNS)]}"
            for i in rng.sample(range(pairs), n)]


def _pseudo(i: int) -> str:
    s = len(_SYLLABLES)
    return _SYLLABLES[i // (s * s)] + _SYLLABLES[(i // s) % s] + _SYLLABLES[i % s]


def distinct_words(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct words in random order: real words (adjectives, nouns, verbs) while they
    suffice, else three-syllable pseudo-words (343,000 of them), as RULER switches to a larger
    list when its first one runs out. None is a substring of another within one call's
    pseudo-words (all have six letters)."""
    real = sorted(set(ADJECTIVES + NOUNS + VERBS))
    if n <= len(real):
        return rng.sample(real, n)
    total = len(_SYLLABLES) ** 3
    if n > total:
        raise ValueError(f"at most {total} distinct words, asked for {n}")
    return [_pseudo(i) for i in rng.sample(range(total), n)]
