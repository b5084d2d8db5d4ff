"""Synthetic scenes: rendered shapes and spoken captions, a paired corpus with no download.

Why: losses, schedules, metrics and resume of visually grounded speech need paired speech and
images in tests and on a laptop (SPEECH-COCO and "Synthetically spoken COCO" are the precedent).
A scene holds 2-4 objects on a 3x3 grid; each object is a (size, colour, shape) unique in its
scene. A caption names two objects and their relation ("a big red circle left of a small blue
square"). Some scenes have a *twin* that differs in exactly one attribute of one object (shape,
colour, size or position), and every caption of both twins mentions that object, so retrieval needs
the whole caption, not one word. Scenes, twins included, and voices are split disjointly.

Everything is decided by :func:`plan_scenes` from one seed; :func:`render` draws one scene as a PNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..atomic import atomic_output
from ..errors import SpeechBudgetError
from .synthetic import UtteranceSpec, _stable_seed, make_speakers

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SIZES = {"big": 0.85, "small": 0.45}  # fraction of a grid cell
GRID = 3
ATTRIBUTES = ("shape", "colour", "size", "position")
BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: Tuple[int, int]  # (column, row), row 0 at the top

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"

    def kind(self) -> Tuple[str, str, str]:
        return (self.size, self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    id: str
    objects: Tuple[SceneObject, ...]
    split: str
    twin: Optional[str] = None  # the scene this one differs from in one attribute
    focus: Optional[int] = None  # index of the object that differs from the twin


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``: the axis with the larger grid distance (ties: horizontal)."""
    dx, dy = a.cell[0] - b.cell[0], a.cell[1] - b.cell[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption(a: SceneObject, b: SceneObject) -> str:
    return f"{a.phrase()} {relation(a, b)} {b.phrase()}"


def _random_object(rng: random.Random, cell: Tuple[int, int]) -> SceneObject:
    return SceneObject(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(SIZES)), cell)


def _random_objects(rng: random.Random) -> Tuple[SceneObject, ...]:
    cells = rng.sample([(c, r) for c in range(GRID) for r in range(GRID)], rng.randint(2, 4))
    while True:
        objects = tuple(_random_object(rng, cell) for cell in cells)
        if len({o.kind() for o in objects}) == len(objects):  # every object nameable unambiguously
            return objects


def _changed(
    obj: SceneObject, attribute: str, rng: random.Random, free: List[Tuple[int, int]]
) -> SceneObject:
    if attribute == "shape":
        return replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    if attribute == "colour":
        return replace(obj, colour=rng.choice([c for c in sorted(COLOURS) if c != obj.colour]))
    if attribute == "size":
        return replace(obj, size=next(s for s in SIZES if s != obj.size))
    return replace(obj, cell=rng.choice(free))


def _partners(scene: Scene, twin: Optional[Scene]) -> List[int]:
    """Objects a caption of ``scene`` may pair with its focus: for a moved object, only those whose
    relation to it differs between the twins (else the caption would fit both)."""
    k = scene.focus
    others = [j for j in range(len(scene.objects)) if j != k]
    if twin is None or scene.objects[k].cell == twin.objects[k].cell:
        return others
    return [
        j
        for j in others
        if relation(scene.objects[k], scene.objects[j]) != relation(twin.objects[k], twin.objects[j])
    ]


def make_twin(scene: Scene, new_id: str, rng: random.Random) -> Optional[Scene]:
    """A copy of ``scene`` with one attribute of one object changed, or None when none works."""
    for _ in range(20):
        k = rng.randrange(len(scene.objects))
        attribute = rng.choice(ATTRIBUTES)
        used = {o.cell for o in scene.objects}
        free = [(c, r) for c in range(GRID) for r in range(GRID) if (c, r) not in used]
        objects = list(scene.objects)
        objects[k] = _changed(objects[k], attribute, rng, free)
        if len({o.kind() for o in objects}) < len(objects):
            continue
        twin = Scene(new_id, tuple(objects), scene.split, twin=scene.id, focus=k)
        if _partners(twin, replace(scene, focus=k)):
            return twin
    return None


def scene_captions(scene: Scene, twin: Optional[Scene], count: int, rng: random.Random) -> List[str]:
    """``count`` captions (distinct while the scene has enough pairs); a twin's all mention the focus."""
    n = len(scene.objects)
    if scene.focus is None:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    else:
        k = scene.focus
        pairs = [p for j in _partners(scene, twin) for p in ((k, j), (j, k))]
    rng.shuffle(pairs)
    chosen = [pairs[i % len(pairs)] for i in range(count)]
    return [caption(scene.objects[i], scene.objects[j]) for i, j in chosen]


@dataclass(frozen=True)
class CaptionSpec:
    """One spoken caption: what to synthesize and which image it describes."""

    utterance: UtteranceSpec
    scene_id: str


def _split_names(n: int, dev_fraction: float, test_fraction: float, what: str, hint: str) -> List[str]:
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    if n - n_test - n_dev < 1:
        raise SpeechBudgetError(
            f"{n} {what} leave none for training after {n_dev} dev and {n_test} test: {hint}"
        )
    return ["test"] * n_test + ["dev"] * n_dev + ["train"] * (n - n_test - n_dev)


def plan_scenes(
    num_scenes: int,
    seed: int = 0,
    distractor_fraction: float = 0.5,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> List[Scene]:
    """``num_scenes`` scenes; groups (a scene and its twin) go to one split together."""
    if num_scenes < 3:
        raise SpeechBudgetError(f"scenes must be at least 3 (one per split), got {num_scenes}")
    if not 0 <= distractor_fraction <= 1:
        raise SpeechBudgetError(f"distractor_fraction must be in [0, 1], got {distractor_fraction}")
    rng = random.Random(f"scenes:{seed}")
    groups: List[List[Scene]] = []
    made = 0
    while made < num_scenes:
        base = Scene(f"scene-{made:06d}", _random_objects(rng), "train")
        group = [base]
        if made + 1 < num_scenes and rng.random() < distractor_fraction:
            twin = make_twin(base, f"scene-{made + 1:06d}", rng)
            if twin is not None:
                group = [replace(base, twin=twin.id, focus=twin.focus), twin]
        groups.append(group)
        made += len(group)
    order = list(range(len(groups)))
    random.Random(f"scene-splits:{seed}").shuffle(order)
    names = _split_names(
        len(groups),
        dev_fraction,
        test_fraction,
        "scene groups",
        "raise scenes (--scenes; a twin pair is one group)",
    )
    split_of = {g: s for g, s in zip(order, names)}
    return [replace(s, split=split_of[g]) for g, group in enumerate(groups) for s in group]


def plan_captions(
    scenes: Sequence[Scene],
    captions_per_scene: int,
    num_voices: int,
    seed: int = 0,
    voices: Optional[List[str]] = None,
) -> List[CaptionSpec]:
    """Spoken captions of every scene, each by a voice of the scene's split (voices split disjointly)."""
    if captions_per_scene < 1:
        raise SpeechBudgetError(f"captions_per_scene must be at least 1, got {captions_per_scene}")
    speakers = make_speakers(num_voices, seed, voices)
    order = list(range(len(speakers)))
    random.Random(f"voice-splits:{seed}").shuffle(order)
    names = _split_names(len(speakers), 0.1, 0.1, "voices", "raise voices (--voices)")
    by_split: Dict[str, list] = {"train": [], "dev": [], "test": []}
    for i, split in zip(order, names):
        by_split[split].append(speakers[i])
    by_id = {s.id: s for s in scenes}
    rng = random.Random(f"captions:{seed}")
    out = []
    for scene in scenes:
        twin = by_id.get(scene.twin) if scene.twin else None
        for n, text in enumerate(scene_captions(scene, twin, captions_per_scene, rng)):
            spk = rng.choice(by_split[scene.split])
            uid = f"{scene.id}-{n:02d}"
            spec = UtteranceSpec(
                uid,
                text,
                spk.id,
                spk.voice,
                spk.variant,
                spk.pitch,
                spk.speed,
                scene.split,
                _stable_seed(seed, uid),
            )
            out.append(CaptionSpec(spec, scene.id))
    return out


def _draw(draw, obj: SceneObject, cell_px: float) -> None:
    c, r = obj.cell
    half = cell_px * SIZES[obj.size] / 2
    cx, cy = (c + 0.5) * cell_px, (r + 0.5) * cell_px
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)


def render(scene: Scene, out_dir: Path, size: int = 64) -> Path:
    """Write ``out_dir/<split>/<scene id>.png`` (``size`` x ``size`` RGB) and return it; kept if present."""
    from PIL import Image, ImageDraw

    path = Path(out_dir) / scene.split / f"{scene.id}.png"
    if path.is_file():
        return path
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, size / GRID)
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return path
