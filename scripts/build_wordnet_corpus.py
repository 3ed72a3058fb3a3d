#!/usr/bin/env python
"""Regenerate oodbench's WordNet 3.0 negative-label corpora from the WordNet database files.

Writes ``wordnet3_nouns.txt.gz`` and ``wordnet3_adjectives.txt.gz`` (into
``oodbench/resources`` by default) from ``data.noun`` and ``data.adj`` of a Princeton WordNet 3.0
database. The files shipped with oodbench were made from the Debian package ``wordnet-base``
(``apt-get install wordnet-base``; files under ``/usr/share/wordnet``)::

    python scripts/build_wordnet_corpus.py --wordnet-dir /usr/share/wordnet

Only the standard library is used; the output is byte-for-byte reproducible (gzip mtime 0).

What NegLabel (Jiang et al., ICLR 2024, github.com/XueJiang16/NegLabel) and CSP (Chen et al.,
NeurIPS 2024, github.com/MengyuanChen21/NeurIPS2024-CSP) use, and what this script does:

* Their candidate corpus is a directory ``txtfiles/`` of one text file per WordNet
  lexicographer file (``noun.animal.txt``, ``adj.pert.txt``, ...; CSP's configs exclude
  ``noun.person``, ``noun.quantity``, ``noun.group`` and ``adj.pert`` by file name). The files
  themselves are not published. Their words are lower-case, and every word we checked in
  NegLabel's published selection (``selected_neg_labels_in1k_10k.txt``: 30 nouns, 92 adjectives,
  e.g. "de kooning", "chagall", "yellow clintonia", "in line") is the *first* lemma of its
  synset; the counts agree too: 15 % of the 67,186 distinct first noun lemmas is 10,077, the
  "15% -> 10000" of their config, while all noun lemmas (117,798) would give 17,670.
  So, as they do: one word per synset, the first lemma (the head word of the synset name
  ``dog.n.01``), lower-cased, ``_`` -> space, adjective markers ``(a)``/``(p)``/``(ip)`` removed;
  adjectives include satellites (ss_type ``s``). Nothing is removed for overlap with any ID label
  at this stage (NegLabel filters by text-embedding similarity later).
* They deduplicate with a dict over all files in ``os.listdir`` order (so which part of speech a
  word shared by nouns and adjectives lands in is arbitrary). Here each part of speech is
  deduplicated on its own (case-insensitive) and sorted; ``oodbench.negatives`` merges
  nouns first, then adjectives not already present.
* Each line also carries the lexicographer files of the synsets the word heads
  (``word<TAB>noun.artifact,noun.plant``), so CSP's file exclusions can be applied.

WordNet data file format (wndb(5WN)): license lines start with two spaces; every other line is
``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt pointers... | gloss``, with
``w_cnt`` two hexadecimal digits, ``lex_id`` one hexadecimal digit, ``lex_filenum`` two decimal
digits indexing the lexicographer files of lexnames(5WN).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "oodbench" / "resources"

# lexnames(5WN) of WordNet 3.0: lex_filenum -> lexicographer file name.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

OUTPUTS = {  # part of speech -> (data file, allowed ss_type, output file)
    "noun": ("data.noun", {"n"}, "wordnet3_nouns.txt.gz"),
    "adjective": ("data.adj", {"a", "s"}, "wordnet3_adjectives.txt.gz"),
}

_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Synset:
    offset: str
    lexname: str
    ss_type: str
    lemmas: tuple[str, ...]


def parse_data_file(path: Path) -> Iterator[Synset]:
    """Yield the synsets of a WordNet ``data.<pos>`` file (license header lines skipped)."""
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split()
            try:
                offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
                w_cnt = int(fields[3], 16)
                lemmas = tuple(fields[4 + 2 * i] for i in range(w_cnt))
                int(fields[4 + 2 * w_cnt - 1], 16)  # the last lex_id must be hexadecimal
            except (IndexError, ValueError) as e:
                raise SystemExit(
                    f"{path}:{lineno}: not a WordNet data line ({e}): {line[:80]!r}"
                ) from e
            if not offset.isdigit() or w_cnt == 0 or not 0 <= lex_filenum < len(LEXNAMES):
                raise SystemExit(f"{path}:{lineno}: not a WordNet data line: {line[:80]!r}")
            yield Synset(offset, LEXNAMES[lex_filenum], ss_type, lemmas)


def read_license(path: Path) -> list[str]:
    """The license/copyright lines at the head of a data file (two leading spaces, then a number)."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(re.sub(r"^\s*\d+\s?", "", line.rstrip()))
    while lines and not lines[-1]:
        lines.pop()
    return lines


def normalise(lemma: str) -> str:
    """WordNet lemma -> candidate text: adjective marker removed, ``_`` -> space, lower case."""
    return " ".join(_MARKER.sub("", lemma).replace("_", " ").split()).lower()


def candidates(synsets: Iterator[Synset], ss_types: set[str]) -> dict[str, set[str]]:
    """First lemma of every synset -> the lexicographer files of the synsets it heads."""
    out: dict[str, set[str]] = {}
    for s in synsets:
        if s.ss_type not in ss_types:
            raise SystemExit(f"synset {s.offset}: unexpected ss_type {s.ss_type!r}")
        word = normalise(s.lemmas[0])
        if word:
            out.setdefault(word, set()).add(s.lexname)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def detect_source(wordnet_dir: Path) -> str:
    """Describe where the database came from (the Debian package version when it is installed)."""
    if wordnet_dir.resolve() == Path("/usr/share/wordnet") and shutil.which("dpkg-query"):
        try:
            version = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "wordnet-base"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            return f"Debian package wordnet-base {version} (Princeton WordNet 3.0)"
        except (OSError, subprocess.CalledProcessError):
            pass
    return f"WordNet database files in {wordnet_dir}"


def package_version() -> str:
    init = REPO / "oodbench" / "__init__.py"
    if init.is_file():
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', init.read_text(), re.M)
        if m:
            return m.group(1)
    return "unknown"


def write_corpus(path: Path, entries: dict[str, set[str]], header: list[str]) -> None:
    text = io.StringIO()
    for line in header:
        text.write(f"# {line}".rstrip() + "\n")
    for word in sorted(entries):
        text.write(f"{word}\t{','.join(sorted(entries[word]))}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.getvalue().encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--wordnet-dir",
        type=Path,
        default=Path("/usr/share/wordnet"),
        help="directory with WordNet 3.0 data.noun and data.adj (default: %(default)s)",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help="where to write (default: oodbench/resources)",
    )
    p.add_argument(
        "--source", default=None, help="text naming the database source (default: detected)"
    )
    args = p.parse_args(argv)

    source = args.source or detect_source(args.wordnet_dir)
    command = " ".join(["python", "scripts/build_wordnet_corpus.py", *argv])
    for pos, (data_name, ss_types, out_name) in OUTPUTS.items():
        data = args.wordnet_dir / data_name
        if not data.is_file():
            raise SystemExit(
                f"{data} not found: give --wordnet-dir, the directory with WordNet 3.0 "
                "data.noun and data.adj (Debian/Ubuntu: apt-get install wordnet-base)."
            )
        entries = candidates(parse_data_file(data), ss_types)
        header = [
            f"oodbench negative-label corpus: WordNet 3.0 {pos}s, {len(entries)} words",
            f"source: {source}, {data_name} sha256 {_sha256(data)}",
            f"generated by oodbench {package_version()}: {command}",
            "selection: the first lemma of every synset (as NegLabel/CSP), lower case, '_' -> ' ', "
            "adjective markers removed, deduplicated, sorted",
            "format: one word per line, then a tab and the WordNet lexicographer files of the "
            "synsets it heads",
            "",
            *read_license(data),
        ]
        out = args.out_dir / out_name
        write_corpus(out, entries, header)
        print(f"{out}: {len(entries)} {pos}s, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
