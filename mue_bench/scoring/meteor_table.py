"""METEOR's paraphrase table cut down to what a dataset's references can use, cached on disk.

Why: METEOR 1.5 spends ~9 s of every sweep parsing its 60 MB paraphrase table (5.3 M phrase pairs)
before it scores anything, which is most of a small sweep's overhead. A pair can only align a span of a
hypothesis with a span of a reference, so a pair with neither phrase made of reference words never
fires: dropping those pairs leaves every score exactly as it was (tests compare against the full
table). The cut table depends only on the references, so a dataset split pays the cut once and every
later sweep on it loads the small file in about a second.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

FORMAT_VERSION = 1
# METEOR's -norm splits punctuation off words; every piece a token could become is kept, so the
# vocabulary can only be too large (a few pairs kept for nothing), never too small.
_PIECES = re.compile(r"\w+|[^\w\s]+")
_MARKS = re.compile(r"[^\w\s]")


def full_table() -> Path:
    """The paraphrase table pycocoevalcap ships with its METEOR jar."""
    from pycocoevalcap.meteor import meteor

    return Path(meteor.__file__).parent / "data" / "paraphrase-en.gz"


def cache_dir() -> Path:
    """$MUE_BENCH_CACHE, else $XDG_CACHE_HOME/mue-bench, else ~/.cache/mue-bench."""
    if os.environ.get("MUE_BENCH_CACHE"):
        return Path(os.environ["MUE_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mue-bench"


def vocabulary(sentences: Iterable[str]) -> frozenset[str]:
    """Every word and word piece of these sentences, lower-cased, as METEOR's normaliser may see them."""
    words: set[str] = set()
    for sentence in sentences:
        for token in sentence.lower().split():
            words.add(token)
            words.update(_PIECES.findall(token))  # runs of word characters, runs of marks
            words.update(_MARKS.findall(token))  # and each mark alone ("!" of "wow...!")
    return frozenset(words)


def _pairs_within(table: bytes, vocab: frozenset[str]) -> dict[int, int]:
    """{pair index: byte offset where the pair starts} for the pairs with a phrase made only of `vocab`.

    A regex over the whole buffer, not a Python loop over its 16 M lines: the pattern starts with a
    newline, which the regex engine finds at C speed, and most lines fail on their first word."""
    if not vocab:
        return {}
    word = b"(?:" + b"|".join(re.escape(w.encode()) for w in sorted(vocab, key=len, reverse=True)) + b")"
    pairs: dict[int, int] = {}
    line, pos = 0, 0
    for m in re.finditer(rb"\n" + word + rb"(?: " + word + rb")*(?=\n|\Z)", table):
        line += table.count(b"\n", pos, m.start() + 1)  # the matched phrase's line number
        pos = m.start() + 1
        if line % 3 == 0:  # a probability line that happens to look like a phrase ("000")
            continue
        first = pos
        for _ in range(line % 3):  # back to the pair's probability line
            first = table.rfind(b"\n", 0, first - 1) + 1
        pairs.setdefault(line // 3, first)
    return pairs


def cut(source: Path, dest: Path, vocab: frozenset[str]) -> int:
    """Write to `dest` the pairs of `source` with at least one phrase made only of `vocab`; returns how
    many. The table is gzipped text, three lines per pair: probability, phrase, paraphrase."""
    table = gzip.decompress(source.read_bytes())
    chunks = []
    for _, first in sorted(_pairs_within(table, vocab).items()):
        last = first
        for _ in range(3):
            last = table.find(b"\n", last) + 1 or len(table)
        chunks.append(table[first:last].rstrip(b"\n") + b"\n")
    body = b"".join(chunks)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".paraphrase-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(body, compresslevel=1))
        os.replace(tmp, dest)  # atomic: concurrent sweeps never read half a table
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(chunks)


def table_for(references: Iterable[str], source: Path | None = None) -> Path | None:
    """The cut table for these references, made on first use and cached under `cache_dir()`; None when the
    cache cannot be written (a read-only home on a cluster), and METEOR then loads the full table."""
    source = source or full_table()
    vocab = vocabulary(references)
    # The table is named by its size and first MiB, not its path or mtime: every environment installed from
    # the same pycocoevalcap shares one cut.
    with open(source, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    key = hashlib.sha256("\n".join([str(FORMAT_VERSION), str(source.stat().st_size), head,
                                    *sorted(vocab)]).encode()).hexdigest()[:20]
    dest = cache_dir() / "meteor" / f"paraphrase-{key}.gz"
    if not dest.is_file():
        try:
            cut(source, dest, vocab)
        except OSError:
            return None
    return dest
