"""OFA's own data files: the TSVs its and the MuE authors' released datasets ship (data/file_dataset.py reads
them: one sample a line, tab-separated, `selected_cols` picking the columns a task reads, the image a base64
string in one of them).

- SNLI-VE (`snli_ve_{train,dev,test}.tsv`, selected_cols 0,2,3,4,5 in run_scripts/snli_ve/*.sh): uniq_id, image,
  hypothesis, caption (the premise, for --add-caption), label (entailment / contradiction / neutral).
- Captioning (`caption_{stage1_train,val,test}.tsv`: uniq_id, image_id, caption, object labels, image): the
  evaluation reads selected_cols 1,4,2 (run_scripts/caption/evaluate_caption*.sh) = image_id, image, caption, the
  test file's caption column holding every reference joined with "&&" (caption_dataset.py splits on it); training
  reads 0,4,2, one caption a line. The paper's CIDEr comes from a COCO-format reference file instead
  (coco_eval.py with test_caption_coco_format.json: {"annotations": [{"image_id", "caption"}]}); given as
  `references`, its captions replace the TSV's for the ids it has.

Only each line's byte offset is kept (`TsvImage`): an image is decoded when it is pre-processed, as OFA's
FileDataset seeks to a line, so a file of many thousand images is neither held in memory nor written out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mue_bench.data.loaders import LABEL_WORDS, Sample, TsvImage, _read_json, dataset_file
from mue_bench.errors import SpecError

# OFA's run scripts' selected_cols, in the order each dataset class unpacks them.
SNLI_VE_COLUMNS = (0, 2, 3, 4, 5)  # uniq_id, image, hypothesis, caption, label
CAPTION_COLUMNS = (1, 4, 2)  # image_id, image, caption (the evaluation's; training reads 0,4,2)
CAPTION_SEPARATOR = "&&"  # caption_dataset.py: a test line's references


def _lines(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(line number, byte offset, cells) of each non-blank line. The base64 column is split off with the rest
    but not kept: callers keep only the offset."""
    offset = 0
    with open(dataset_file(path, "the TSV file"), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SpecError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            yield lineno, start, text.rstrip("\r\n").split("\t")


def _check_columns(columns: tuple[int, ...], names: tuple[str, ...]) -> None:
    if len(columns) != len(names):
        raise SpecError(f"data.columns: {len(columns)} given; this layout reads {len(names)} "
                        f"({', '.join(names)})")


def _columns(path: Path, lineno: int, cells: list[str], columns: tuple[int, ...], names: tuple[str, ...],
             ) -> list[str]:
    missing = [f"{n} (column {c})" for c, n in zip(columns, names) if c >= len(cells)]
    if missing:
        raise SpecError(f"{path}:{lineno}: missing {', '.join(missing)}: the line has {len(cells)} "
                        "tab-separated columns")
    return [cells[c] for c in columns]


def load_snli_ve_tsv(path: Path, columns: tuple[int, ...] = SNLI_VE_COLUMNS, limit: int | None = None,
                     ) -> list[Sample]:
    """SNLI-VE as OFA's snli_ve_{split}.tsv: the premise kept (the caption column), the label as the word OFA
    generates (snli_ve_dataset.py maps them; any other label is refused, as it raises there)."""
    names = ("uniq_id", "image", "hypothesis", "caption", "label")
    _check_columns(columns, names)
    samples = []
    for lineno, offset, cells in _lines(path):
        uniq_id, _, hypothesis, caption, label = _columns(path, lineno, cells, columns, names)
        if label not in LABEL_WORDS:
            raise SpecError(f"{path}:{lineno}: unknown label {label!r} (column {columns[4]}); SNLI-VE's are "
                            f"{', '.join(LABEL_WORDS)}")
        if not hypothesis.strip():
            raise SpecError(f"{path}:{lineno}: empty hypothesis (column {columns[2]})")
        samples.append(Sample(uniq_id, TsvImage(path, offset, lineno, columns[1]), "entailment",
                              hypothesis=hypothesis.strip(), premise=caption.strip(), label=LABEL_WORDS[label]))
        if limit is not None and len(samples) == limit:
            break
    return samples


def load_caption_tsv(path: Path, columns: tuple[int, ...] = CAPTION_COLUMNS, references: Path | None = None,
                     limit: int | None = None) -> list[Sample]:
    """Captioning as OFA's caption_{split}.tsv: the references are the caption column split on "&&", or, with
    `references` (a COCO-format file), that file's captions of the line's id."""
    names = ("id", "image", "caption")
    _check_columns(columns, names)
    by_id = coco_references(references) if references is not None else {}
    samples = []
    for lineno, offset, cells in _lines(path):
        sid, _, caption = _columns(path, lineno, cells, columns, names)
        refs = by_id.get(sid) or tuple(r.strip() for r in caption.split(CAPTION_SEPARATOR) if r.strip())
        if not refs:
            raise SpecError(f"{path}:{lineno}: no caption (column {columns[2]})"
                            + (f" and id {sid!r} is not in {references}" if references is not None else ""))
        samples.append(Sample(sid, TsvImage(path, offset, lineno, columns[1]), "caption", references=refs))
        if limit is not None and len(samples) == limit:
            break
    return samples


def coco_references(path: Path) -> dict[str, tuple[str, ...]]:
    """Captions per image id (as a string, as OFA writes its predictions' ids) of a COCO-format annotations file."""
    data = _read_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise SpecError(f"{path}: no 'annotations' list (a COCO-format caption file has one)")
    out: dict[str, list[str]] = {}
    for i, a in enumerate(anns):
        try:
            out.setdefault(str(a["image_id"]), []).append(str(a["caption"]).strip())
        except (KeyError, TypeError) as e:
            raise SpecError(f"{path}: annotations[{i}] is malformed (missing {e})") from None
    return {k: tuple(v) for k, v in out.items()}
