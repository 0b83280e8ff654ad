"""Loaders for the on-disk formats mue-bench reads: Karpathy-split COCO captions, SNLI-VE JSONL, and a
generic JSONL (one image, an optional prompt, and references or a label per line).

Each returns plain `Sample` records (an image path plus what the task needs); prompts are a model
family's business and are added by its adapter. Problems name the file and the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mue_bench.errors import SpecError

# SNLI-VE's labels as OFA generates them: a word the decoder emits.
LABEL_WORDS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


@dataclass(frozen=True)
class Sample:
    sample_id: str
    image: Path
    task: str  # "caption" | "entailment"
    references: tuple[str, ...] = field(default=())
    hypothesis: str = ""
    # SNLI-VE's premise: the Flickr30k caption of the image (the JSONL release's sentence1, OFA's TSV `caption`
    # column), which OFA's --add-caption prompt puts before the hypothesis; "" where the data has none.
    premise: str = ""
    label: str = ""  # the label word, for entailment
    prompt: str = ""  # set by the generic JSONL: overrides the model family's own prompt


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"dataset file {path} is a folder; give the annotations file" if path.is_dir()
                        else f"dataset file not found: {path}")
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
    if not jsonl.is_file():
        raise SpecError(f"dataset file {jsonl} is a folder; give the annotations file" if jsonl.is_dir()
                        else f"dataset file not found: {jsonl}")
    with open(jsonl) as f:
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
    """Fail before any model work if an image is missing or unreadable, naming it."""
    from PIL import Image

    for s in samples:
        if not s.image.is_file():
            raise SpecError(f"image {s.image} is a folder, not an image (sample {s.sample_id})" if s.image.is_dir()
                            else f"image not found: {s.image} (sample {s.sample_id})")
        try:
            with Image.open(s.image) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for a bad file
            raise SpecError(f"image unreadable: {s.image} (sample {s.sample_id}: {e})") from None
