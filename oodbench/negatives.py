"""Negative-label corpora for NegLabel and CSP: their published word files, WordNet 3.0 word
lists, user word files, fixed published selections, templates.

Default corpus (``neglabel-nouns`` / ``neglabel-adjectives``): NegLabel's published
``txtfiles/{noun,adj}.<lexname>.txt`` (``oodbench/resources/neglabel_txtfiles.tar.gz``, unchanged;
source and licences in ``NEGLABEL_NOTICE.txt``), read as the reference code reads them: every
file, in one file order, each stripped line kept once (the first file that has it decides
whether it is a noun or an adjective), in file and line order. The reference takes the file
order from ``os.listdir`` (file-system dependent); :data:`NEGLABEL_FILE_ORDER` is an order that
reproduces the published ImageNet selection's counts (8,578 nouns + 1,921 adjectives = 15 % of
57,189 nouns and 12,811 adjectives) and puts every published selected word into the bank it was
published in.

The older corpora ``wordnet-nouns`` / ``wordnet-adjectives`` (``wordnet3_*.txt.gz``, generated
from Princeton WordNet 3.0 by ``scripts/build_wordnet_corpus.py``) hold every noun/adjective
synset head, including the lexicographer files the reference leaves out (``noun.animal``,
``noun.food``, ...). Each of their lines may carry, after a tab, the WordNet lexicographer files
of the synsets the word heads (used for CSP's exclusions).

Nothing is filtered against the ID labels by default, as in the reference (its exact-name
filter runs only with ``pos_topk``; the published ImageNet selection contains 37 ImageNet class
names): ``remove_id_overlap`` does it on request. CSP's near-duplicate rule is part of the
mining (``oodbench.scorers.clip.mine_negatives``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import random
import re
import tarfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from .errors import OodbenchError, suggest

NEGLABEL_TXTFILES = "neglabel_txtfiles.tar.gz"
# The order in which the published txtfiles are read (see the module doc): the 11 noun files
# below first, then the adjective files, then the remaining noun files. Only the position of
# noun files relative to adjective files changes a bank (a word in both kinds goes to the kind
# read first); of the orders of that shape, four reproduce the published counts, and they
# differ in the 3 words of noun.Tops and noun.motive only.
NEGLABEL_FILE_ORDER = (
    "noun.Tops", "noun.cognition", "noun.event", "noun.feeling", "noun.motive", "noun.phenomenon",
    "noun.possession", "noun.process", "noun.relation", "noun.shape", "noun.time",
    "adj.all", "adj.pert", "adj.ppl",
    "noun.act", "noun.artifact", "noun.attribute", "noun.body", "noun.communication", "noun.group",
    "noun.location", "noun.object", "noun.person", "noun.plant", "noun.quantity", "noun.state",
    "noun.substance",
)
# Corpora read from the published txtfiles (nouns, adjectives); see :func:`reference_pool`.
REFERENCE_CORPORA = {"neglabel-nouns": 0, "neglabel-adjectives": 1}
DEFAULT_NOUNS, DEFAULT_ADJECTIVES = "neglabel-nouns", "neglabel-adjectives"

# Fixed published selections (``--negatives file:NAME``): prompted lines, used as given.
SELECTIONS = {"neglabel-in1k": "neglabel_selected_in1k_10k.txt.gz"}

# Named corpus -> resource files, read in this order (later files add only new words).
CORPORA: dict[str, tuple[str, ...]] = {
    "neglabel-nouns": (NEGLABEL_TXTFILES,),
    "neglabel-adjectives": (NEGLABEL_TXTFILES,),
    "wordnet-nouns": ("wordnet3_nouns.txt.gz",),
    "wordnet-adjectives": ("wordnet3_adjectives.txt.gz",),
    "wordnet": ("wordnet3_nouns.txt.gz", "wordnet3_adjectives.txt.gz"),
}

# CSP's configs leave these lexicographer files out of the candidate pool (``txt_exclude``;
# NegLabel keeps all).
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


@functools.cache
def published_txtfiles() -> dict[str, tuple[str, ...]]:
    """NegLabel's published word files: lexname (``"noun.act"``) -> its lines, unchanged
    (newlines removed), in file order."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(_resource_bytes(NEGLABEL_TXTFILES)), mode="r:gz") as tf:
        for member in tf.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name.endswith(".txt"):
                out[name[: -len(".txt")]] = tuple(tf.extractfile(member).read().decode("utf-8").splitlines())
    return out


def reference_pool(
    exclude_lexnames: Iterable[str] = (), *, underscores_to_spaces: bool = False
) -> tuple[list[str], list[str]]:
    """(nouns, adjectives) of the published txtfiles, as NegLabel/CSP build their pools.

    Files are read in :data:`NEGLABEL_FILE_ORDER` minus ``exclude_lexnames`` (CSP's
    ``txt_exclude``); each stripped line is kept once, by the first file that has it, in file and
    line order. ``underscores_to_spaces``: CSP replaces ``_`` by a space before deduplicating
    (the published files have no ``_``, so both readings agree).
    """
    files = published_txtfiles()
    excluded = set(exclude_lexnames)
    unknown = excluded - set(files) - {"noun", "adj"}
    if unknown:
        raise OodbenchError(
            f"Unknown lexicographer file(s) {', '.join(sorted(unknown))}: the published files are "
            f"{', '.join(sorted(files))}."
        )
    seen: set[str] = set()
    pools: tuple[list[str], list[str]] = ([], [])
    for lexname in NEGLABEL_FILE_ORDER:
        if lexname in excluded:
            continue
        kind = 0 if lexname.startswith("noun.") else 1
        for line in files[lexname]:
            word = (line.replace("_", " ") if underscores_to_spaces else line).strip()
            if word in seen:
                continue
            seen.add(word)
            pools[kind].append(word)
    return pools


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
    lexicographer files (user files) are kept. The published corpora ``neglabel-nouns`` /
    ``neglabel-adjectives`` are one bank of :func:`reference_pool` (excluded files are not read,
    so their words may land in the other kind, as in CSP).
    """
    if isinstance(name_or_path, str) and name_or_path in REFERENCE_CORPORA:
        return reference_pool(exclude_lexnames)[REFERENCE_CORPORA[name_or_path]]
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


SELECTION_TEMPLATE = "{}"  # a selection's lines are the prompts themselves


def load_selection(name_or_path: str | Path) -> list[str]:
    """The prompts of a fixed negative-label selection, in file order, to embed as given.

    A named selection (:data:`SELECTIONS`, e.g. ``"neglabel-in1k"``: NegLabel's published
    ImageNet-1k negatives) or a text file (plain or gzip) with one prompt per line, as NegLabel
    writes its ``selected_neg_labels.txt``: the text that is embedded, template included
    (``"the nice yellow clintonia"``, ``"This is a nice photo"``), so no template is applied
    again. Blank lines and ``#`` comments are skipped; order is kept (it fixes the groups), and
    repeated lines are refused.
    """
    if isinstance(name_or_path, str) and name_or_path in SELECTIONS:
        text = gzip.decompress(_resource_bytes(SELECTIONS[name_or_path])).decode("utf-8")
        where = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise OodbenchError(
                f"Negative-label selection {str(name_or_path)!r} is not a file: give a text file with one "
                f"prompt per line, or one of {', '.join(sorted(SELECTIONS))}."
            )
        try:
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
            raise OodbenchError(f"Cannot read negative-label selection {str(path)!r}: {e}") from e
        where = repr(str(path))
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise OodbenchError(f"Negative-label selection {where} has no prompts: give one prompt per line.")
    seen: set[str] = set()
    for i, p in enumerate(prompts):
        if p in seen:
            raise OodbenchError(f"Negative-label selection {where} repeats {p!r} (entry {i + 1}): remove the copy.")
        seen.add(p)
    return prompts


def split_prompt(prompt: str) -> tuple[str, str]:
    """(template, word) of a NegLabel prompt: ``"the nice {}"`` or ``"This is a {} photo"``;
    ``("{}", prompt)`` for any other text."""
    for template in (*NEGLABEL_NOUN_TEMPLATES, *NEGLABEL_ADJECTIVE_TEMPLATES):
        head, _, tail = template.partition("{}")
        if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) > len(head) + len(tail):
            return template, prompt[len(head) : len(prompt) - len(tail)]
    return SELECTION_TEMPLATE, prompt


def corpus_header(name: str) -> list[str]:
    """The ``#`` header lines (source, version, generating command, license) of a named corpus."""
    if name not in CORPORA:
        raise suggest(name, CORPORA, "negative-label corpus")
    if name in REFERENCE_CORPORA:
        notice = _resource_bytes("NEGLABEL_NOTICE.txt").decode("utf-8").splitlines()
        return [ln.strip() for ln in notice[3:12] if ln.strip()] + [
            "WordNet 3.0 Copyright 2006 by Princeton University (WordNet licence, Apache-2.0 repository: "
            "see oodbench/resources/NEGLABEL_NOTICE.txt)"
        ]
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
