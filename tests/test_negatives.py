"""Negative-label corpora (WordNet 3.0 resources, user files), ID-overlap removal, CSP conjugation."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from oodbench import negatives as neg
from oodbench.errors import OodbenchError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build_wordnet_corpus.py"


@pytest.fixture(scope="module")
def nouns() -> list[str]:
    return neg.load_corpus("wordnet-nouns")


@pytest.fixture(scope="module")
def adjectives() -> list[str]:
    return neg.load_corpus("wordnet-adjectives")


# ---------------------------------------------------------------- shipped corpora


def test_resources_exist_and_are_small():
    for name in ("wordnet3_nouns.txt.gz", "wordnet3_adjectives.txt.gz"):
        path = REPO / "oodbench" / "resources" / name
        assert path.is_file()
        assert path.stat().st_size < 1_000_000
    # pyproject ships every file of the folder
    assert '"resources/*"' in (REPO / "pyproject.toml").read_text()


def test_corpus_sizes(nouns, adjectives):
    # WordNet 3.0 has 82,115 noun and 18,156 adjective synsets; distinct first lemmas:
    assert 60_000 < len(nouns) < 75_000  # 67,186
    assert 12_000 < len(adjectives) < 16_000  # 14,006
    # 15 % of the nouns is NegLabel's "15% -> 10000"
    assert 9_500 < 0.15 * len(nouns) < 10_500
    both = neg.load_corpus("wordnet")
    noun_keys = {w.casefold() for w in nouns}
    extra = [a for a in adjectives if a.casefold() not in noun_keys]
    assert both == nouns + extra  # nouns first, then adjectives that are not nouns
    assert len(both) < len(nouns) + len(adjectives)


def test_header_counts_match(nouns, adjectives):
    for name, words in (("wordnet-nouns", nouns), ("wordnet-adjectives", adjectives)):
        header = neg.corpus_header(name)
        assert header[0].endswith(f", {len(words)} words")
        text = "\n".join(header)
        assert "WordNet 3.0" in text and "wordnet-base" in text
        assert "scripts/build_wordnet_corpus.py" in text
        assert "Copyright 2006 by Princeton University" in text  # the WordNet license travels along


@pytest.mark.parametrize("name", ["wordnet-nouns", "wordnet-adjectives", "wordnet"])
def test_corpus_is_clean(name):
    words = neg.load_corpus(name)
    assert len({w.casefold() for w in words}) == len(words)
    for w in words:
        assert w and w == w.strip() and "\t" not in w and "_" not in w and "  " not in w
        assert not w.startswith("#")
        assert w == w.lower()
        assert "(" not in w  # adjective markers such as "(a)" are gone
    if name != "wordnet":
        assert words == sorted(words)


def test_known_words(nouns, adjectives):
    nouns_set, adj_set = set(nouns), set(adjectives)
    # first lemmas of their synsets (also in NegLabel's published selection)
    for w in ("dog", "cat", "entity", "de kooning", "chagall", "yellow clintonia", "kite"):
        assert w in nouns_set, w
    for w in ("wooden", "abounding", "in line", "al dente", "outback", "galore"):
        assert w in adj_set, w
    # later lemmas of a synset are not candidates (dog.n.01 = dog, domestic_dog, Canis_familiaris)
    for w in ("domestic dog", "canis familiaris", "marc chagall"):
        assert w not in nouns_set, w
    assert not any(w.endswith(("(a)", "(p)", "(ip)")) for w in adjectives)


def test_exclude_lexnames(nouns):
    kept = neg.load_corpus("wordnet-nouns", exclude_lexnames=neg.CSP_EXCLUDED_LEXNAMES)
    assert 50_000 < len(kept) < len(nouns)
    kept_set = set(kept)
    assert "chagall" not in kept_set  # noun.person only
    assert "dog" in kept_set  # noun.animal and noun.person: still in noun.animal
    adj = neg.load_corpus("wordnet-adjectives", exclude_lexnames=neg.CSP_EXCLUDED_LEXNAMES)
    assert 10_000 < len(adj) < 14_006


# ---------------------------------------------------------------- user files and errors


def test_user_file(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text(
        "# my negatives\n\nrocket\n  space   station \nRocket\nrocket\ttag.x\n# end\nmoon\n"
    )
    assert neg.load_corpus(f) == ["rocket", "space station", "moon"]
    assert neg.load_corpus(str(f)) == ["rocket", "space station", "moon"]
    # exclusions do not touch words without lexicographer files
    assert neg.load_corpus(f, exclude_lexnames=["noun.person"]) == [
        "rocket",
        "space station",
        "moon",
    ]
    g = tmp_path / "words.txt.gz"
    g.write_bytes(gzip.compress(b"alpha\nbeta\tnoun.person\n"))
    assert neg.load_corpus(g) == ["alpha", "beta"]
    assert neg.load_corpus(g, exclude_lexnames=["noun.person"]) == ["alpha"]


def test_errors(tmp_path):
    with pytest.raises(OodbenchError, match="wordnet-nouns"):
        neg.load_corpus("wordnet-noun")  # unknown name: suggests the close one
    with pytest.raises(OodbenchError, match="Unknown negative-label corpus 'imagenet21k'"):
        neg.load_corpus("imagenet21k")
    with pytest.raises(OodbenchError, match="does not exist"):
        neg.load_corpus(tmp_path / "missing.txt")
    with pytest.raises(OodbenchError, match="does not exist"):
        neg.load_corpus("some/missing.txt")
    with pytest.raises(OodbenchError, match="not a file"):
        neg.load_corpus(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(OodbenchError, match="no words"):
        neg.load_corpus(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(OodbenchError, match="Cannot read"):
        neg.load_corpus(bad)
    with pytest.raises(OodbenchError):
        neg.corpus_header("nope")


# ---------------------------------------------------------------- ID overlap, conjugation, templates


def test_remove_id_overlap():
    words = [
        "Dog",
        "dogs",
        "cat",
        "kite",
        "kites",
        "tulip",
        "hot_dog",
        "hot dogs",
        "ox",
        "oxen",
        "goldfish",
    ]
    classes = ["dog", "kite (bird of prey)", "tulips", "Hot Dog", "ox", "goldfishes"]
    # only a naive plural "s" is matched: "oxen" and "goldfish" stay
    assert neg.remove_id_overlap(words, classes) == ["cat", "oxen", "goldfish"]
    assert neg.remove_id_overlap([], classes) == []
    assert neg.remove_id_overlap(["a", "b"], []) == ["a", "b"]


def test_conjugate():
    adjs = ["wooden", "red", "tiny", "foggy"]
    out = neg.conjugate(adjs)
    assert len(out) == len(adjs)
    assert out == neg.conjugate(adjs, seed=0)  # seeded: reproducible
    for a, phrase in zip(adjs, out, strict=True):
        assert phrase in {s.format(a) for s in neg.CSP_SUFFIXES}
    every = neg.conjugate(adjs[:2], all_suffixes=True)
    assert len(every) == 2 * len(neg.CSP_SUFFIXES)
    assert every[:2] == ["wooden environment", "wooden space"]
    assert "wooden object" in every and "red scene" in every
    assert neg.conjugate(["red"], ["{} thing"]) == ["red thing"]
    assert neg.conjugate([]) == []
    with pytest.raises(OodbenchError, match="exactly once"):
        neg.conjugate(["red"], ["object"])
    with pytest.raises(OodbenchError):
        neg.conjugate(["red"], [])


def test_templates():
    assert len(neg.CSP_SUFFIXES) == 14 and "{} object" in neg.CSP_SUFFIXES
    assert neg.NEGATIVE_TEMPLATES["neglabel-noun"] == ("the nice {}",)
    for name, templates in neg.NEGATIVE_TEMPLATES.items():
        assert templates, name
        assert all(t.count("{}") == 1 for t in templates), name
    assert neg.fill_templates(["moon"], ("the nice {}", "{}")) == [["the nice moon", "moon"]]
    fp = neg.corpus_fingerprint(["a", "b"])
    assert len(fp) == 16 and fp == neg.corpus_fingerprint(["a", "b"]) != neg.corpus_fingerprint(
        ["b", "a"]
    )


# ---------------------------------------------------------------- the generating script

_LICENSE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2   \n"
    "  3 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)
# Real-format lines (wndb(5WN)): offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt ptrs | gloss
_NOUNS = (
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is perceived  \n"
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus Canis  \n"
    "10023039 18 n 01 dog 1 001 @ 10752093 n 0000 | a dull unattractive unpleasant girl or woman  \n"
    "11018936 18 n 02 de_Kooning 0 Willem_de_Kooning 0 001 @ 10020890 n 0000 | United States painter  \n"
    "03001627 06 n 0b Chair 0 c1 0 c2 0 c3 0 c4 0 c5 0 c6 0 c7 0 c8 0 c9 0 c10 0 000 | a seat  \n"
    "03001628 06 n 01 chair 1 000 | lower-case duplicate of a capitalised head word  \n"
)
_ADJS = (
    "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance  \n"
    "00020103 00 s 02 outback(a) 0 remote 0 001 & 00019874 a 0000 | inaccessible and sparsely populated  \n"
    "02712745 01 a 01 lunar 0 001 \\ 09358358 n 0000 | of or relating to the moon  \n"
    "00001740 00 a 01 able 0 001 ! 00002098 a 0101 | having the necessary means  \n"
)


def _fake_wordnet(tmp_path: Path) -> Path:
    wn = tmp_path / "wordnet"
    wn.mkdir()
    (wn / "data.noun").write_text(_LICENSE + _NOUNS)
    (wn / "data.adj").write_text(_LICENSE + _ADJS)
    return wn


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_build_script_parses_wordnet_format(tmp_path):
    wn = _fake_wordnet(tmp_path)
    out = tmp_path / "out"
    r = _run_script("--wordnet-dir", str(wn), "--out-dir", str(out), "--source", "fake WordNet")
    assert r.returncode == 0, r.stderr
    nouns_gz, adjs_gz = out / "wordnet3_nouns.txt.gz", out / "wordnet3_adjectives.txt.gz"
    # first lemma per synset, lower case, '_' -> ' ', deduplicated, sorted; w_cnt read as hex (0b)
    assert neg.load_corpus(nouns_gz) == ["chair", "de kooning", "dog", "entity"]
    assert neg.load_corpus(adjs_gz) == ["able", "abounding", "lunar", "outback"]
    text = gzip.decompress(nouns_gz.read_bytes()).decode()
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert "dog\tnoun.animal,noun.person" in body
    assert "de kooning\tnoun.person" in body and "chair\tnoun.artifact" in body
    assert "# source: fake WordNet, data.noun sha256 " in text
    assert (
        "# generated by oodbench " in text
        and "scripts/build_wordnet_corpus.py --wordnet-dir" in text
    )
    assert "# WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in text
    assert neg.load_corpus(nouns_gz, exclude_lexnames=["noun.person"]) == ["chair", "dog", "entity"]
    assert neg.load_corpus(adjs_gz, exclude_lexnames=["adj.pert"]) == [
        "able",
        "abounding",
        "outback",
    ]
    # reproducible byte for byte
    first = nouns_gz.read_bytes()
    assert (
        _run_script(
            "--wordnet-dir", str(wn), "--out-dir", str(out), "--source", "fake WordNet"
        ).returncode
        == 0
    )
    assert nouns_gz.read_bytes() == first


def test_build_script_rejects_bad_input(tmp_path):
    wn = _fake_wordnet(tmp_path)
    (wn / "data.adj").write_text(_LICENSE + "not a wordnet line\n")
    r = _run_script("--wordnet-dir", str(wn), "--out-dir", str(tmp_path / "out"))
    assert r.returncode != 0 and "not a WordNet data line" in r.stderr
    r = _run_script("--wordnet-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out"))
    assert r.returncode != 0 and "not found" in r.stderr
