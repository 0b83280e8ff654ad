"""The synthetic `shapes` benchmark, generated deterministically from a seed.

Why synthetic: mue-bench must run on a fresh laptop with no downloads, yet exercise what early exit
exploits, namely that some inputs are easy and some are hard. An image holds 1-4 coloured shapes of
varied size and position: one large shape is easy to caption, four small ones are not.

Why these file formats: the generator writes exactly what the real datasets ship, a Karpathy-split
`dataset_coco.json` with an image folder for captioning and SNLI-VE-style JSONL for entailment, so
the loaders that read the demo are the loaders that read COCO and SNLI-VE.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 48
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
NEUTRAL_PROPERTIES = ("heavy", "new", "old", "soft", "warm", "wooden")
SPLIT_SIZES = {"train": 6000, "val": 500, "test": 500}
# 2: neutral hypotheses name a property no image shows ("the red circle is heavy"): a wording shortcut.
# 3: every neutral hypothesis is a left-of relation naming one shape the image lacks, worded exactly as the
#    true and false relations are, so only the image tells the three apart. Images and captions are as in 2.
# 4: as 3, but a true or false relation only names shapes whose centres are at least RELATION_GAP pixels apart:
#    in 3, 1 in 4 named shapes under 8 px apart (of 48), where even the best checkpoint was near chance
#    (studies/NOTEBOOK.md, entailment by relation gap). Images and captions are as in 2 and 3.
VERSIONS = (2, 3, 4)
RELATION_GAP = 8
# What a spec or training config gets when it names none: the version the shipped checkpoints were trained and
# measured on (the model cards in mue_bench/checkpoints/).
DEFAULT_VERSION = 4
MARKER = "shapes.json"


def default_root(version: int) -> str:
    """Where a spec or training config that names no folder keeps a version: one folder per version, so runs on
    different versions never regenerate each other's files."""
    return f"data/shapes-v{version}"


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    size: str  # "small" | "large"
    x: int  # centre
    y: int
    radius: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def _sample_scene(rng: random.Random) -> list[Shape]:
    count = rng.choice((1, 1, 2, 2, 3, 4))
    pairs = rng.sample([(c, k) for c in COLORS for k in SHAPES], count)
    placed: list[Shape] = []
    for color, kind in pairs:
        for _ in range(200):
            size = rng.choice(("small", "large"))
            radius = rng.randint(4, 6) if size == "small" else rng.randint(8, 11)
            x = rng.randint(radius + 1, IMAGE_SIZE - radius - 2)
            y = rng.randint(radius + 1, IMAGE_SIZE - radius - 2)
            clear = all(abs(x - s.x) > radius + s.radius + 1 or abs(y - s.y) > radius + s.radius + 1
                        for s in placed)
            # Distinct x keeps "left of" unambiguous.
            if clear and all(abs(x - s.x) >= 3 for s in placed):
                placed.append(Shape(color, kind, size, x, y, radius))
                break
    return sorted(placed, key=lambda s: s.x)


def _draw(shapes: list[Shape], rng: random.Random) -> Image.Image:
    shade = rng.randint(0, 60)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        box = (s.x - s.radius, s.y - s.radius, s.x + s.radius, s.y + s.radius)
        if s.kind == "circle":
            draw.ellipse(box, fill=COLORS[s.color])
        elif s.kind == "square":
            draw.rectangle(box, fill=COLORS[s.color])
        else:
            draw.polygon([(s.x, s.y - s.radius), (s.x - s.radius, s.y + s.radius),
                          (s.x + s.radius, s.y + s.radius)], fill=COLORS[s.color])
    return img


def _listing(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return " , ".join(items[:-1]) + " and " + items[-1]


def captions(shapes: list[Shape]) -> list[str]:
    """Five references with varied wording, shapes always named left to right."""
    sized = [f"a {s.size} {s.name}" for s in shapes]
    plain = [f"a {s.name}" for s in shapes]
    n = len(shapes)
    noun = "shape" if n == 1 else "shapes"
    relation = " left of ".join(plain) if n > 1 else f"{plain[0]} on its own"
    return [
        _listing(sized),
        "there is " + _listing(plain),
        f"{COUNT_WORDS[n]} {noun} : " + _listing(plain),
        relation,
        "an image of " + _listing(sized),
    ]


def hypotheses(shapes: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """Three (hypothesis, label) pairs, one per label, about colour, count, kind or position."""
    present_colors = {s.color for s in shapes}
    absent_colors = [c for c in COLORS if c not in present_colors]
    n = len(shapes)

    entail = [f"there is a {rng.choice(shapes).color} shape",
              f"there {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'}",
              f"there is a {rng.choice(shapes).kind}"]
    absent_kinds = [k for k in SHAPES if k not in {s.kind for s in shapes}]
    contra = [f"there is a {rng.choice(absent_colors)} shape",
              f"there are {COUNT_WORDS[rng.choice([c for c in COUNT_WORDS if c != n and c > 1])]} shapes"]
    if absent_kinds:  # otherwise "there is a <kind>" would always be true: a hypothesis-only shortcut
        contra.append(f"there is a {rng.choice(absent_kinds)}")
    if n > 1:
        i, j = sorted(rng.sample(range(n), 2))
        a, b = shapes[i], shapes[j]
        entail.append(f"the {a.name} is left of the {b.name}")
        contra.append(f"the {b.name} is left of the {a.name}")
    neutral = f"the {rng.choice(shapes).name} is {rng.choice(NEUTRAL_PROPERTIES)}"
    return [(rng.choice(entail), "entailment"), (rng.choice(contra), "contradiction"),
            (neutral, "neutral")]


def _absent_like(shapes: list[Shape], rng: random.Random) -> str:
    """A shape the image lacks that shares its colour or its kind with one it has, so that neither colour
    nor kind alone shows it is missing."""
    present = {(s.color, s.kind) for s in shapes}
    near = [(c, k) for s in shapes for c, k in [(s.color, k) for k in SHAPES] + [(c, s.kind) for c in COLORS]
            if (c, k) not in present]
    color, kind = rng.choice(sorted(set(near)))
    return f"{color} {kind}"


def _relation_pair(shapes: list[Shape], rng: random.Random, min_gap: int) -> tuple[Shape, Shape] | None:
    """Two shapes, the left one first, whose centres are at least `min_gap` apart; None if no two are.
    Rejection sampling draws uniformly among such pairs, and with `min_gap` 0 it draws exactly as version 3
    always did (one `rng.sample`), which keeps version 3's files as they were."""
    if len(shapes) < 2 or max(s.x for s in shapes) - min(s.x for s in shapes) < min_gap:
        return None
    while True:
        left, right = sorted(rng.sample(shapes, 2), key=lambda s: s.x)
        if right.x - left.x >= min_gap:
            return left, right


def hypotheses_v3(shapes: list[Shape], rng: random.Random, min_gap: int = 0) -> list[tuple[str, str]]:
    """Three (hypothesis, label) pairs, one per label. Relations carry all three labels: true, reversed, or
    naming a shape the image lacks (neutral: the image cannot say where a missing shape would be). Where an
    image has two or more shapes, three in four true and false hypotheses are relations; the rest are
    colour, count and colour-kind claims, so counting and binding still matter. True and false relations
    name shapes at least `min_gap` apart (version 4); where no two are, the claim is of another kind."""
    n = len(shapes)
    present_colors = {s.color for s in shapes}
    absent_colors = [c for c in COLORS if c not in present_colors]
    counts = [c for c in COUNT_WORDS if c != n and c > 1]
    entail = [f"there is a {rng.choice(shapes).color} shape",
              f"there {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'}",
              f"there is a {rng.choice(shapes).name}"]
    contra = [f"there is a {rng.choice(absent_colors)} shape",
              f"there are {COUNT_WORDS[rng.choice(counts)]} shapes",
              f"there is a {_absent_like(shapes, rng)}"]
    if n > 1 and rng.random() < 0.75 and (pair := _relation_pair(shapes, rng, min_gap)):
        left, right = pair
        entail = [f"the {left.name} is left of the {right.name}"]
    if n > 1 and rng.random() < 0.75 and (pair := _relation_pair(shapes, rng, min_gap)):
        left, right = pair
        contra = [f"the {right.name} is left of the {left.name}"]
    named, missing = f"the {rng.choice(shapes).name}", f"the {_absent_like(shapes, rng)}"
    first, second = (named, missing) if rng.random() < 0.5 else (missing, named)
    return [(rng.choice(entail), "entailment"), (rng.choice(contra), "contradiction"),
            (f"{first} is left of {second}", "neutral")]


@dataclass(frozen=True)
class Scene:
    split: str
    image_id: int
    shapes: list[Shape]  # left to right
    image: Image.Image
    pairs: list[tuple[str, str]]  # (hypothesis, label), one per label

    @property
    def name(self) -> str:
        return f"shapes_{self.image_id:06d}"


def scenes(seed: int = 0, sizes: dict[str, int] | None = None, version: int = DEFAULT_VERSION) -> Iterator[Scene]:
    """Every image of the benchmark in file order, from one random stream over all splits: what `generate`
    writes, and where an analysis finds the shapes behind a hypothesis (their positions are in no file)."""
    if version not in VERSIONS:  # here, not in the generator below, so that a bad version fails on the call
        raise ValueError(f"shapes generator version {version} is not one of {VERSIONS}")
    return _drawn(seed, sizes or SPLIT_SIZES, version)


def _drawn(seed: int, sizes: dict[str, int], version: int) -> Iterator[Scene]:
    rng = random.Random(seed)
    image_id = 0
    for split, count in sizes.items():
        for _ in range(count):
            shapes = _sample_scene(rng)
            image = _draw(shapes, rng)
            pairs = hypotheses(shapes, rng)  # drawn in every version: it keeps images and captions as in 2
            if version >= 3:
                pairs = hypotheses_v3(shapes, random.Random(f"{seed}/{image_id}"),
                                      min_gap=RELATION_GAP if version >= 4 else 0)
            yield Scene(split, image_id, shapes, image, pairs)
            image_id += 1


def generate(root: Path, seed: int = 0, sizes: dict[str, int] | None = None,
             version: int = DEFAULT_VERSION) -> Path:
    """Write the benchmark under `root` atomically (a temp dir renamed into place)."""
    sizes = sizes or SPLIT_SIZES
    drawn = scenes(seed, sizes, version)  # checks the version before anything is written
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        karpathy: list[dict] = []
        rows: dict[str, list[dict]] = {split: [] for split in sizes}
        for scene in drawn:
            scene.image.save(tmp / "images" / f"{scene.name}.png")
            karpathy.append({
                "filepath": "images", "filename": f"{scene.name}.png", "split": scene.split,
                "imgid": scene.image_id, "cocoid": scene.image_id,
                "sentences": [{"raw": c, "tokens": c.split()} for c in captions(scene.shapes)],
            })
            rows[scene.split] += [{"pairID": f"{scene.image_id}-{k}", "Flickr30K_ID": scene.name,
                                   "sentence2": hyp, "gold_label": label}
                                  for k, (hyp, label) in enumerate(scene.pairs)]
        for split, split_rows in rows.items():
            with open(tmp / f"snli_ve_{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in split_rows)
        (tmp / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))
        (tmp / MARKER).write_text(json.dumps({"seed": seed, "sizes": sizes, "version": version}))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def ensure(root: Path, seed: int = 0, sizes: dict[str, int] | None = None,
           version: int = DEFAULT_VERSION) -> Path:
    """Generate the benchmark unless `root` already holds one from the same seed and version (and the
    same split sizes, when sizes are given)."""
    marker = Path(root) / MARKER
    if marker.exists():
        found = json.loads(marker.read_text())
        if (found.get("seed"), found.get("version")) == (seed, version) and (
                sizes is None or found.get("sizes") == sizes):
            return Path(root)
    return generate(Path(root), seed, sizes, version)
