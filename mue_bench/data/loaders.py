"""Loaders for the on-disk formats mue-bench reads: Karpathy-split COCO captions, SNLI-VE JSONL, and a
generic JSONL (one image, an optional prompt, and references or a label per line); OFA's TSV files are read by
`data/ofa_tsv.py`.

Each returns plain `Sample` records (where the image is, plus what the task needs); prompts are a model
family's business and are added by its adapter. Problems name the file and the row. An image is a file, or a
cell of a TSV file (`TsvImage`): every consumer opens it with `open_image`, so a TSV's base64 images are decoded
when they are pre-processed, never written out or held in memory all at once.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mue_bench.errors import SpecError

if TYPE_CHECKING:
    from PIL import Image

# SNLI-VE's labels as OFA generates them: a word the decoder emits.
LABEL_WORDS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


@dataclass(frozen=True)
class TsvImage:
    """An image stored as a base64 string in column `column` of the line at byte `offset` of a TSV file (line
    number `line`, for messages), as OFA's datasets store them (data/file_dataset.py reads lines by offset)."""

    path: Path
    offset: int
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    def read_bytes(self) -> bytes:
        """The decoded image file; a missing column or bad base64 is one line naming the file and line."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            cells = f.readline().rstrip(b"\r\n").split(b"\t")
        if self.column >= len(cells):
            raise SpecError(f"{self}: no column {self.column} (the image) in this line of {len(cells)} columns")
        try:  # OFA decodes with urlsafe_b64decode (caption_dataset.py, snli_ve_dataset.py); it reads either alphabet
            return base64.urlsafe_b64decode(cells[self.column])
        except (binascii.Error, ValueError) as e:
            raise SpecError(f"{self}: column {self.column} is not valid base64 ({e})") from None


ImageSource = Path | TsvImage


def open_image(source: ImageSource) -> Image.Image:
    """The image `source` names, opened (use it as a context manager, as `Image.open`)."""
    from PIL import Image

    if isinstance(source, TsvImage):
        return Image.open(io.BytesIO(source.read_bytes()))
    return Image.open(source)


@dataclass(frozen=True)
class Sample:
    sample_id: str
    image: ImageSource
    task: str  # "caption" | "entailment"
    references: tuple[str, ...] = field(default=())
    hypothesis: str = ""
    # SNLI-VE's premise: the Flickr30k caption of the image (the JSONL release's sentence1, OFA's TSV `caption`
    # column), which OFA's --add-caption prompt puts before the hypothesis; "" where the data has none.
    premise: str = ""
    label: str = ""  # the label word, for entailment
    prompt: str = ""  # set by the generic JSONL: overrides the model family's own prompt


def dataset_file(path: Path, what: str = "the annotations file") -> Path:
    """`path`, refused in one line unless it is a file (a folder, or nothing)."""
    if not path.is_file():
        raise SpecError(f"dataset file {path} is a folder; give {what}" if path.is_dir()
                        else f"dataset file not found: {path}")
    return path


def _read_json(path: Path) -> dict:
    dataset_file(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def load_karpathy(annotations: Path, image_root: Path, split: str) -> list[Sample]:
    """COCO in Karpathy's `dataset_coco.json`: images[i] has filepath, filename, split, sentences."""
    data = _read_json(annotations)
    samples = []
    for i, img in enumerate(data.get("images", [])):
        try:
            img_split = "train" if img["split"] == "restval" else img["split"]
            if img_split != split:
                continue
            refs = tuple(s["raw"].strip() for s in img["sentences"])
            path = image_root / img.get("filepath", "") / img["filename"]
            sid = str(img.get("cocoid", img.get("imgid", i)))
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"{annotations}: images[{i}] is malformed (missing {e})") from None
        if not refs:
            raise SpecError(f"{annotations}: images[{i}] has no sentences")
        samples.append(Sample(sid, path, "caption", references=refs))
    return samples


def _jsonl_rows(jsonl: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line; a bad line is named by file and line."""
    with open(dataset_file(jsonl)) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(f"{jsonl}:{lineno}: not valid JSON ({e.msg})") from None


def load_snli_ve(jsonl: Path, image_root: Path, image_pattern: str = "{id}.jpg") -> list[Sample]:
    """SNLI-VE's JSONL release: Flickr30K_ID, sentence2 (hypothesis), gold_label, pairID, and sentence1 (the
    premise, a caption of the image) where the file has it."""
    samples = []
    for lineno, row in _jsonl_rows(jsonl):
        try:
            samples.append(Sample(str(row.get("pairID", lineno)),
                                  image_root / image_pattern.format(id=row["Flickr30K_ID"]),
                                  "entailment", hypothesis=row["sentence2"].strip(),
                                  premise=str(row.get("sentence1") or "").strip(),
                                  label=LABEL_WORDS[row["gold_label"]]))
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"{jsonl}:{lineno}: missing or unknown value {e}") from None
    return samples


def load_jsonl(jsonl: Path, image_root: Path, task: str) -> list[Sample]:
    """Generic JSONL: {"image": path (relative to image_root), "prompt": optional text, and "references":
    [captions] for captioning or "label": the word to generate for classification; "id", "hypothesis" and
    "premise" optional}."""
    want = "references" if task == "caption" else "label"
    samples = []
    for lineno, row in _jsonl_rows(jsonl):
        if not isinstance(row, dict) or "image" not in row or want not in row:
            raise SpecError(f"{jsonl}:{lineno}: needs 'image' and '{want}' (task {task!r})")
        refs, label = row.get("references", []), row.get("label", "")
        if task == "caption" and (not isinstance(refs, list) or not refs
                                  or not all(isinstance(r, str) for r in refs)):
            raise SpecError(f"{jsonl}:{lineno}: 'references' must be a non-empty list of strings")
        if task != "caption" and (not isinstance(label, str) or not label.strip()):
            raise SpecError(f"{jsonl}:{lineno}: 'label' must be a non-empty string")
        samples.append(Sample(str(row.get("id", lineno)), image_root / str(row["image"]), task,
                              references=tuple(r.strip() for r in refs), label=str(label).strip(),
                              hypothesis=str(row.get("hypothesis", "")), premise=str(row.get("premise", "")).strip(),
                              prompt=str(row.get("prompt", ""))))
    return samples


def check_images(samples: list[Sample]) -> None:
    """Fail before any model work if an image is missing or unreadable, naming it (a TSV cell by file and line)."""
    for s in samples:
        if isinstance(s.image, Path) and not s.image.is_file():
            raise SpecError(f"image {s.image} is a folder, not an image (sample {s.sample_id})" if s.image.is_dir()
                            else f"image not found: {s.image} (sample {s.sample_id})")
        try:
            with open_image(s.image) as im:
                im.verify()
        except SpecError:
            raise
        except Exception as e:  # PIL raises many types for a bad file
            raise SpecError(f"image unreadable: {s.image} (sample {s.sample_id}: {e})") from None
