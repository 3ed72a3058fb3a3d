"""Negative-label corpora for NegLabel and CSP: WordNet 3.0 word lists, user word files, templates.

The shipped corpora (``oodbench/resources/wordnet3_*.txt.gz``) were generated from Princeton
WordNet 3.0 (Debian package ``wordnet-base``) by ``scripts/build_wordnet_corpus.py``, which says
how they follow NegLabel's and CSP's (unpublished) ``txtfiles``: the first lemma of every noun /
adjective synset, lower case, deduplicated, sorted. Each line may carry, after a tab, the WordNet
lexicographer files of the synsets the word heads (used for CSP's exclusions).

Nothing is filtered against the ID labels here: NegLabel keeps the candidates least similar to the
ID labels in text-embedding space (``remove_id_overlap`` only drops exact name matches).
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from .errors import OodbenchError, suggest

# Named corpus -> resource files, read in this order (later files add only new words).
CORPORA: dict[str, tuple[str, ...]] = {
    "wordnet-nouns": ("wordnet3_nouns.txt.gz",),
    "wordnet-adjectives": ("wordnet3_adjectives.txt.gz",),
    "wordnet": ("wordnet3_nouns.txt.gz", "wordnet3_adjectives.txt.gz"),
}

# CSP's configs leave these lexicographer files out of the candidate pool (NegLabel keeps all).
CSP_EXCLUDED_LEXNAMES = ("noun.person", "noun.quantity", "noun.group", "adj.pert")

# NegLabel (released code and config): nouns in ``prompt_templates[85]`` = "the nice {}" (no
# period; the ID labels use the same template), adjectives in "This is a {} photo".
NEGLABEL_NOUN_TEMPLATES = ("the nice {}",)
NEGLABEL_ADJECTIVE_TEMPLATES = ("This is a {} photo",)

# CSP (class_names.py): each adjective is "conjugated" with one suffix drawn at random (seeded)...
CSP_SUFFIXES = (
    "{} environment",
    "{} space",
    "{} object",
    "{} scene",
    "{} place",
    "{} item",
    "{} area",
    "{} view",
    "{} thing",
    "{} pattern",
    "{} structure",
    "{} landscape",
    "{} vista",
    "{} creature",
)
# ...then embedded with these templates and averaged; nouns (and the ID labels) are averaged over
# the noun templates.
CSP_NOUN_TEMPLATES = (
    "a close-up photo of the nice {}.",
    "a photo with the nice {}.",
    "a good photo with the nice {}.",
    "a photo of the nice {}.",
    "{}",
    "the {}",
    "the good {}",
    "the nice {}",
)
CSP_ADJECTIVE_TEMPLATES = (
    "{}",
    "a nice photo of {}",
    "a good photo of {}",
    "a close-up photo of {}",
)

# Template sets for embedding negative labels, by name (embeddings are averaged over a set).
NEGATIVE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "neglabel-noun": NEGLABEL_NOUN_TEMPLATES,
    "neglabel-adjective": NEGLABEL_ADJECTIVE_TEMPLATES,
    "csp-noun": CSP_NOUN_TEMPLATES,
    "csp-adjective": CSP_ADJECTIVE_TEMPLATES,
}


def _resource_bytes(filename: str) -> bytes:
    return resources.files("oodbench").joinpath("resources").joinpath(filename).read_bytes()


def _key(word: str) -> str:
    """Case- and whitespace-insensitive comparison key (``_`` counts as a space)."""
    return " ".join(word.replace("_", " ").split()).casefold()


def _parse(lines: Iterable[str], where: str) -> list[tuple[str, tuple[str, ...]]]:
    """``word[<TAB>lexname,lexname]`` lines -> (word, lexnames); ``#`` comments and blanks skipped."""
    entries = []
    for line in lines:
        word, _, meta = line.rstrip("\r\n").partition("\t")
        word = " ".join(word.split())
        if not word or word.startswith("#"):
            continue
        lexnames = tuple(m.strip() for m in meta.split(",") if m.strip())
        entries.append((word, lexnames))
    if not entries:
        raise OodbenchError(f"Negative-label file {where} has no words: give one word per line.")
    return entries


def _read_resource(filename: str) -> list[tuple[str, tuple[str, ...]]]:
    data = _resource_bytes(filename)
    return _parse(gzip.decompress(data).decode("utf-8").splitlines(), filename)


def _read_file(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise OodbenchError(f"Cannot read negative-label file {str(path)!r}: {e}") from e
    return _parse(text.splitlines(), repr(str(path)))


def _resolve(name_or_path: str | Path) -> list[list[tuple[str, tuple[str, ...]]]]:
    if isinstance(name_or_path, str) and name_or_path in CORPORA:
        return [_read_resource(f) for f in CORPORA[name_or_path]]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return [_read_file(path)]
    text = str(name_or_path)
    if path.exists():
        raise OodbenchError(
            f"Negative-label file {text!r} is not a file: give a text file with one word per line."
        )
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or path.suffix:
        raise OodbenchError(
            f"Negative-label file {text!r} does not exist: give a text file with one word per line, "
            f"or one of the named corpora {', '.join(sorted(CORPORA))}."
        )
    err = suggest(text, CORPORA, "negative-label corpus")
    raise OodbenchError(f"{err} Or give the path of a text file with one word per line.")


def load_corpus(name_or_path: str | Path, *, exclude_lexnames: Iterable[str] = ()) -> list[str]:
    """Negative-label candidates of a named corpus (``CORPORA``) or a user word file.

    A user file has one word or phrase per line (plain text or gzip, UTF-8); lines starting with
    ``#`` and blank lines are skipped. Words are deduplicated case-insensitively, keeping the first
    spelling and the file order (``"wordnet"``: nouns, then adjectives that are not nouns).
    ``exclude_lexnames`` drops words whose WordNet lexicographer files are *all* excluded, as
    leaving those ``txtfiles`` out does in CSP (``CSP_EXCLUDED_LEXNAMES``); words without
    lexicographer files (user files) are kept.
    """
    excluded = set(exclude_lexnames)
    seen: set[str] = set()
    words: list[str] = []
    for entries in _resolve(name_or_path):
        for word, lexnames in entries:
            if excluded and lexnames and excluded.issuperset(lexnames):
                continue
            key = _key(word)
            if key not in seen:
                seen.add(key)
                words.append(word)
    return words


def corpus_header(name: str) -> list[str]:
    """The ``#`` header lines (source, version, generating command, license) of a named corpus."""
    if name not in CORPORA:
        raise suggest(name, CORPORA, "negative-label corpus")
    lines = []
    for filename in CORPORA[name]:
        data = _resource_bytes(filename)
        for line in gzip.decompress(data).decode("utf-8").splitlines():
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
    return lines


def corpus_fingerprint(words: Sequence[str]) -> str:
    """A short hash of a word list, to record which negatives a score was computed with."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()[:16]


def _id_keys(classnames: Iterable[str]) -> set[str]:
    keys = set()
    for name in classnames:
        for form in (name, re.sub(r"\s*\([^)]*\)\s*$", "", name)):  # "kite (bird of prey)" too
            key = _key(form)
            if key:
                keys.add(key)
    return keys


def remove_id_overlap(words: Iterable[str], classnames: Iterable[str]) -> list[str]:
    """Drop candidates that name an ID class: equal case-insensitively, or up to a plural ``s``.

    A trailing parenthetical of a class name also counts without it ("kite (bird of prey)" drops
    "kite"). Order is kept. (NegLabel/CSP drop exact matches only when ``pos_topk`` is set; their
    similarity-percentile selection removes near-synonyms.)
    """
    ids = _id_keys(classnames)
    out = []
    for word in words:
        key = _key(word)
        if key in ids or key + "s" in ids or (key.endswith("s") and key[:-1] in ids):
            continue
        out.append(word)
    return out


def conjugate(
    adjectives: Sequence[str],
    suffixes: Sequence[str] = CSP_SUFFIXES,
    *,
    seed: int | None = 0,
    all_suffixes: bool = False,
) -> list[str]:
    """CSP's "conjugated" adjectives: each adjective put into a suffix template (``"{} object"``).

    As in CSP, every adjective gets one suffix drawn at random (``random.Random(seed)``, in input
    order), so the output is as long as the input; ``all_suffixes=True`` gives every adjective with
    every suffix instead (adjective-major order).
    """
    suffixes = tuple(suffixes)
    if not suffixes:
        raise OodbenchError("conjugate needs at least one suffix template such as '{} object'.")
    for s in suffixes:
        if s.count("{}") != 1:
            raise OodbenchError(
                f"Suffix template {s!r} must contain '{{}}' exactly once, e.g. '{{}} object'."
            )
    if all_suffixes:
        return [s.format(a) for a in adjectives for s in suffixes]
    rng = random.Random(seed)
    return [rng.choice(suffixes).format(a) for a in adjectives]


def fill_templates(words: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """``[[template.format(word) for template in templates] for word in words]``."""
    return [[t.format(w) for t in templates] for w in words]
