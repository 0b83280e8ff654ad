"""METEOR's paraphrase table cut to the references' words: the same scores, a much smaller file, cut once."""

import gzip
from pathlib import Path

from mue_bench.scoring import meteor_table
from mue_bench.scoring.metrics import meteor_process, score_grid, score_tokenized, tokenize_grid


def _write_table(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_bytes(gzip.compress("".join(f"0.5\n{a}\n{b}\n" for a, b in pairs).encode()))
    return path


def _pairs(path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    return [(lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)]


def test_the_vocabulary_holds_every_piece_the_normaliser_may_split_off():
    vocab = meteor_table.vocabulary(["A man's 3-way street", "wow...!"])
    assert {"a", "man's", "man", "'", "s", "3-way", "3", "-", "way", "street", "...!", ".", "!"} <= vocab
    assert "A" not in vocab  # METEOR -norm lower-cases


def test_a_pair_is_kept_when_either_phrase_is_made_of_reference_words(tmp_path):
    source = _write_table(tmp_path / "full.gz", [("next to", "close to"), ("close to", "beside"),
                                                  ("near", "next to"), ("far", "away"), ("next", "far away")])
    kept = meteor_table.cut(source, tmp_path / "cut.gz", frozenset({"next", "to", "near"}))
    assert kept == 3
    assert _pairs(tmp_path / "cut.gz") == [("next to", "close to"), ("near", "next to"), ("next", "far away")]


def test_cutting_follows_the_three_line_layout_whatever_the_lines_hold(tmp_path):
    """Probabilities that read like words, a first or last pair, a table without a final newline."""
    source = tmp_path / "full.gz"
    source.write_bytes(gzip.compress(b"0.5\nnear\nclose\n0.5\nfar\naway\n0.5\naway\nnear"))
    kept = meteor_table.cut(source, tmp_path / "cut.gz", frozenset({"near", "0.5"}))
    assert kept == 2
    assert _pairs(tmp_path / "cut.gz") == [("near", "close"), ("away", "near")]


def test_the_cut_table_is_made_once_per_vocabulary_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MUE_BENCH_CACHE", str(tmp_path / "cache"))
    source = _write_table(tmp_path / "full.gz", [("next to", "close to"), ("far", "away")])
    cuts = []
    real_cut = meteor_table.cut
    monkeypatch.setattr(meteor_table, "cut", lambda *a: cuts.append(a) or real_cut(*a))
    first = meteor_table.table_for(["a cat next to a dog"], source)
    assert meteor_table.table_for(["a dog next to a cat"], source) == first  # same words, same table
    other = meteor_table.table_for(["a cat far from a dog"], source)
    assert other != first and len(cuts) == 2
    assert _pairs(first) == [("next to", "close to")] and _pairs(other) == [("far", "away")]
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, other.name])  # no temp files


def test_meteor_scores_with_the_cut_table_equal_the_full_tables(tmp_path, monkeypatch):
    """Captions whose only alignments are paraphrases ('next to' ~ 'close to', 'in front of' ~ 'before'),
    one hypothesis paraphrase outside the references' words ('alongside'), punctuation and case."""
    monkeypatch.setenv("MUE_BENCH_CACHE", str(tmp_path / "cache"))
    refs = [["a dog sits next to a cat .", "A dog and a cat"], ["a lamp in front of a wall"],
            ["a cup on top of a wooden table", "the man's 3-way street"]]
    preds = {"p": ["a dog sits close to a cat", "a lamp before a wall", "a cup above a wooden table"],
             "q": ["a dog sits alongside a cat", "a wall", "The man's 3-way street!"]}
    gts, tokens = tokenize_grid(preds, refs)
    cut = meteor_table.table_for(s for r in gts.values() for s in r)
    assert 0 < len(_pairs(cut)) < 100_000  # of 5.3 M pairs
    none = _write_table(tmp_path / "none.gz", [("zebra", "okapi")])
    scores = {"cut": score_grid(preds, refs)[2]}  # how sweeps score: the cut table, made once
    assert list((tmp_path / "cache" / "meteor").iterdir()) == [cut]
    for name, table in {"full": None, "none": none}.items():
        with meteor_process(True, table) as scorer:
            scores[name] = score_tokenized(gts, tokens, scorer)
    for point in preds:
        assert scores["cut"][point]["meteor_per_sample"].tolist() == scores["full"][point]["meteor_per_sample"].tolist()
        assert scores["cut"][point]["meteor"] == scores["full"][point]["meteor"]
    # The paraphrases do score: without them the same captions align less.
    assert scores["none"]["p"]["meteor"] < scores["full"]["p"]["meteor"]
    assert scores["none"]["q"]["meteor_per_sample"][0] < scores["full"]["q"]["meteor_per_sample"][0]


def test_an_unwritable_cache_falls_back_to_the_full_table(tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("MUE_BENCH_CACHE", str(tmp_path / "not-a-dir"))
    source = _write_table(tmp_path / "full.gz", [("next to", "close to")])
    assert meteor_table.table_for(["a cat next to a dog"], source) is None
