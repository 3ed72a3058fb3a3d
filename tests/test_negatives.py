"""Negative-label corpora (WordNet 3.0 resources, user files), ID-overlap removal, CSP conjugation."""

from __future__ import annotations

import gzip
import hashlib
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


# ---------------------------------------------------------------- NegLabel's published corpus
# the reference copy, where present: ../shared of the checkout (or of a worktree's parent)
PUBLISHED = next((d / "shared" / "data" / "neglabel" for d in (REPO.parent, REPO.parent.parent)
                  if (d / "shared" / "data" / "neglabel").is_dir()), REPO.parent / "shared" / "data" / "neglabel")
# sha256 over the published txtfiles: for each file (sorted by name) its name, then its sorted
# lines joined by newlines; and the published ImageNet-1k selection in file order
TXTFILES_SHA256 = "82dea24c08b5f4cb933313374c5fd508d2889b60c8f680872bf1682d12a1d3e4"
TXTFILES_LINES = 79_455
SELECTION_SHA256 = "fdc5f4edbfb0f7c198343cdc3bce46070f151d88f7d29caf0ed4a7ddde817d7d"


def _files_digest(files: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\n")
        h.update("\n".join(sorted(files[name])).encode() + b"\n")
    return h.hexdigest()


def _pool_by_hand(files: dict, order, excluded=()) -> tuple[list[str], list[str]]:
    """NegLabel's reading of its txtfiles (multi_modal.py), written out: every file in order,
    ``line.strip()`` kept once (first file wins), noun files -> nouns, adj files -> adjectives."""
    dedup, nouns, adjs = set(), [], []
    for name in order:
        if name in excluded:
            continue
        for line in files[name]:
            if line.strip() in dedup:
                continue
            dedup.add(line.strip())
            (nouns if name.split(".")[0] == "noun" else adjs).append(line.strip())
    return nouns, adjs


def test_default_corpus_is_the_published_txtfiles():
    files = neg.published_txtfiles()
    assert len(files) == 27 and "noun.animal" not in files and "noun.food" not in files
    assert sum(len(v) for v in files.values()) == TXTFILES_LINES
    assert _files_digest(files) == TXTFILES_SHA256  # committed: runs without the reference copy
    assert sorted(neg.NEGLABEL_FILE_ORDER) == sorted(files)
    assert (neg.DEFAULT_NOUNS, neg.DEFAULT_ADJECTIVES) == ("neglabel-nouns", "neglabel-adjectives")
    notice = (REPO / "oodbench" / "resources" / "NEGLABEL_NOTICE.txt").read_text()
    assert "3253db684075b2db47844676eccdfda40d67a573" in notice and "Apache License" in notice
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in notice


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="no reference copy of NegLabel's files at ../shared/data/neglabel")
def test_shipped_files_equal_the_reference_copy():
    ref = {p.name[: -len(".txt")]: p.read_text().splitlines() for p in (PUBLISHED / "txtfiles").glob("*.txt")}
    files = neg.published_txtfiles()
    assert set(ref) == set(files)
    for name in ref:
        assert list(files[name]) == ref[name], name  # unchanged, line for line
    assert _files_digest(ref) == TXTFILES_SHA256
    sel = (PUBLISHED / "selected_neg_labels" / "selected_neg_labels_in1k_10k.txt").read_text().splitlines()
    assert neg.load_selection("neglabel-in1k") == sel


def test_reference_pool_reproduces_the_published_counts():
    files = neg.published_txtfiles()
    nouns, adjs = neg.reference_pool()
    assert (nouns, adjs) == _pool_by_hand(files, neg.NEGLABEL_FILE_ORDER)
    assert neg.load_corpus("neglabel-nouns") == nouns and neg.load_corpus("neglabel-adjectives") == adjs
    assert (len(nouns), len(adjs)) == (57_189, 12_811)
    assert not set(nouns) & set(adjs)  # each word in one bank only
    # NegLabel keeps int(len * 0.15) of each kind: the published ImageNet selection's counts
    sel = neg.load_selection("neglabel-in1k")
    split = [neg.split_prompt(p) for p in sel]
    sel_nouns = [w for t, w in split if t == "the nice {}"]
    sel_adjs = [w for t, w in split if t == "This is a {} photo"]
    assert len(sel_nouns) + len(sel_adjs) == len(sel) == 10_499
    assert (int(len(nouns) * 0.15), int(len(adjs) * 0.15)) == (len(sel_nouns), len(sel_adjs)) == (8_578, 1_921)
    assert sel[: len(sel_nouns)] == [f"the nice {w}" for w in sel_nouns]  # nouns first, then adjectives
    # every published selected word is in the bank it was published in (406 adjectives are
    # also nouns elsewhere, one noun also an adjective: the file order decides them)
    assert set(sel_nouns) <= set(nouns) and set(sel_adjs) <= set(adjs)
    # a plain sorted file order (adj.* first) does not: it gives 8,536 + 1,963
    n2, a2 = _pool_by_hand(files, sorted(files))
    assert (int(len(n2) * 0.15), int(len(a2) * 0.15)) == (8_536, 1_963)


def test_csp_pool_excludes_its_files():
    files = neg.published_txtfiles()
    excl = neg.CSP_EXCLUDED_LEXNAMES
    nouns, adjs = neg.reference_pool(excl)
    assert (nouns, adjs) == _pool_by_hand(files, neg.NEGLABEL_FILE_ORDER, {*excl})
    assert neg.load_corpus("neglabel-nouns", exclude_lexnames=excl) == nouns
    assert neg.load_corpus("neglabel-adjectives", exclude_lexnames=excl) == adjs
    elsewhere = set().union(*(files[f] for f in files if f not in excl))
    only_person = set(files["noun.person"]) - elsewhere
    assert only_person and not only_person & set(nouns)
    assert neg.reference_pool(excl, underscores_to_spaces=True) == (nouns, adjs)  # no '_' published
    with pytest.raises(OodbenchError, match="Unknown lexicographer file"):
        neg.reference_pool(["noun.animals"])
    assert "NEGLABEL_NOTICE.txt" in "\n".join(neg.corpus_header("neglabel-nouns"))


def test_selection_files(tmp_path):
    sel = neg.load_selection("neglabel-in1k")
    assert sel[0] == "the nice yellow clintonia" and hashlib.sha256("\n".join(sel).encode()).hexdigest() == SELECTION_SHA256
    assert neg.split_prompt("the nice yellow clintonia") == ("the nice {}", "yellow clintonia")
    assert neg.split_prompt("This is a nice photo") == ("This is a {} photo", "nice")
    assert neg.split_prompt("a tree") == ("{}", "a tree")
    p = tmp_path / "sel.txt"
    p.write_text("# mine\nthe nice cup\n\nThis is a red photo\n")
    assert neg.load_selection(p) == ["the nice cup", "This is a red photo"]  # prompts kept as given
    g = tmp_path / "sel.txt.gz"
    g.write_bytes(gzip.compress(p.read_bytes()))
    assert neg.load_selection(str(g)) == ["the nice cup", "This is a red photo"]
    p.write_text("the nice cup\nthe nice cup\n")
    with pytest.raises(OodbenchError, match="repeats 'the nice cup'"):
        neg.load_selection(p)
    p.write_text("# nothing\n")
    with pytest.raises(OodbenchError, match="has no prompts"):
        neg.load_selection(p)
    with pytest.raises(OodbenchError, match="is not a file"):
        neg.load_selection(tmp_path / "missing.txt")


def test_fixed_selection_is_embedded_as_given_and_not_mined(digits_store, tmp_path):
    """``--negatives file:PATH``: the prompts are embedded verbatim (no second template), the
    ID labels under 'the nice {}', and NegLabel scores with exactly these negatives in file order."""
    import shutil

    import numpy as np
    from typer.testing import CliRunner

    from oodbench import api
    from oodbench.cli import app
    from oodbench.scorers.clip import neglabel_score
    from oodbench.scorers.inputs import l2_normalize
    from oodbench.store import Store, read_h5

    store = tmp_path / "s"
    shutil.copytree(digits_store["store"], store)
    key = digits_store["key"]
    prompts = [f"the nice {w}" for w in ("cat", "house", "river", "car", "tree", "lamp", "cup")] + [
        "This is a red photo", "This is a shiny photo", "This is a wooden photo"]
    sel = tmp_path / "selected.txt"
    sel.write_text("\n".join(prompts) + "\n")
    res = CliRunner().invoke(app, ["extract", "--store", str(store), "--negatives", f"file:{sel}", "--layers", "all", "--local",
                                      "--device", "cpu"])
    assert res.exit_code == 0, res.output
    arrays, attrs = read_h5(Store(store).text_path(key, "digits-negatives_file"))
    assert attrs["names"] == prompts and attrs["templates"] == ["{}"]
    _, cls = read_h5(Store(store).text_path(key, "digits-classes_neglabel"))
    assert cls["templates"] == ["the nice {}"]
    recs = api.score(["neglabel"], store=store, params=["neglabel.bank=negatives_file", "neglabel.ngroup=2"])
    # the same score by hand from the stored arrays: all 10 negatives, file order, 2 groups
    cls_arrays, _ = read_h5(Store(store).text_path(key, "digits-classes_neglabel"))
    pos = l2_normalize(cls_arrays["embeds"][0].astype(np.float64))
    negs = l2_normalize(arrays["embeds"][0].astype(np.float64))
    feats, _ = read_h5(Store(store).features_path(key, "digits-id-test"))
    emb = l2_normalize(feats["image_embeds"].astype(np.float64))
    np.testing.assert_allclose(recs[0].id_scores, neglabel_score(emb, pos, negs, 0.01, 2, 0), rtol=1e-6)
    res = CliRunner().invoke(app, ["extract", "--store", str(store), "--negatives", "file:nope.txt", "--layers", "all",
                                      "--local", "--device", "cpu"])
    assert res.exit_code != 0 and "is not a file" in res.output and "Traceback" not in res.output


def test_csp_banks_average_raw_prompt_embeddings(tmp_path):
    """CSP's code averages the raw text embeddings over its prompts, then normalises;
    CLIP's ensemble (reduce=True) normalises each prompt first. Different when norms differ."""
    import types

    import numpy as np
    import torch

    from oodbench.extract import write_text_bank
    from oodbench.store import Store, read_h5

    g = torch.Generator().manual_seed(0)
    table = torch.randn(256, 8, generator=g)

    class Model(torch.nn.Module):
        def encode_text(self, tokens):  # a deterministic stand-in with prompt-dependent norms
            return (table[tokens] * (1 + tokens[..., None] % 7)).sum(1)

    def tokenizer(texts):
        return torch.tensor([[ord(c) % 256 for c in t.ljust(40)[:40]] for t in texts])

    bundle = types.SimpleNamespace(key="m", model=Model(), tokenizer=tokenizer, fingerprint="f")
    st = Store(tmp_path)
    names, templates = ["cup", "tree"], list(neg.CSP_NOUN_TEMPLATES)
    raw = np.stack([[Model().encode_text(tokenizer([t.format(n)]))[0].numpy() for n in names] for t in templates])
    arrays, attrs = read_h5(write_text_bank(bundle, st, "raw", names, templates, reduce="raw"))
    np.testing.assert_allclose(arrays["embeds"][0], raw.mean(0), rtol=1e-6)
    assert attrs["templates"][0].startswith("raw-mean ensemble of 8: ")
    arrays2, _ = read_h5(write_text_bank(bundle, st, "clip", names, templates, reduce=True))
    unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    np.testing.assert_allclose(arrays2["embeds"][0], unit.mean(0), rtol=1e-6)
    a = arrays["embeds"][0] / np.linalg.norm(arrays["embeds"][0], axis=-1, keepdims=True)
    b = arrays2["embeds"][0] / np.linalg.norm(arrays2["embeds"][0], axis=-1, keepdims=True)
    assert np.abs(a - b).max() > 1e-3


def test_csp_conjugated_pool_follows_the_reference_reading():
    """CSP's multi_modal.py: random.seed(seed) once, then, reading the files in order, one
    random.choice of its 14 suffixes per adjective kept (nouns draw nothing)."""
    import random as stdlib_random

    files = neg.published_txtfiles()
    excl = set(neg.CSP_EXCLUDED_LEXNAMES)
    stdlib_random.seed(0)
    dedup, expected = set(), []
    for name in neg.NEGLABEL_FILE_ORDER:
        if name in excl:
            continue
        for line in files[name]:
            word = line.replace("_", " ").strip()
            if word in dedup:
                continue
            dedup.add(word)
            if name.startswith("adj."):
                expected.append(stdlib_random.choice(neg.CSP_SUFFIXES).format(word))
    got = neg.conjugate(neg.load_corpus("neglabel-adjectives", exclude_lexnames=neg.CSP_EXCLUDED_LEXNAMES))
    assert got == expected and len(got) == 9_812
