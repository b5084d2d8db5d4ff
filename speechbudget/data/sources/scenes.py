"""Synthetic scenes: rendered shapes with espeak-ng spoken captions, the paired corpus for VGS tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from ...errors import SpeechBudgetError
from ..executor import run_map
from ..images import check_images
from ..scenes import plan_captions, plan_scenes, render
from ..synthetic import synthesize
from . import FindContext, Source, SourceItem, option


@dataclass
class ScenesOptions:
    scenes: int = option(200, help="Number of scenes (images), distractor twins included.")
    captions_per_scene: int = option(3, help="Spoken captions per scene.")
    voices: int = option(24, help="Number of voices; a tenth each (at least one) are dev and test voices.")
    seed: int = option(0, help="Random seed (same seed, same corpus).")
    image_size: int = option(64, help="Side of the square images in pixels.")
    distractors: float = option(
        0.5, help="Fraction of scenes that get a twin differing in exactly one attribute of one object."
    )


def find_items(opts: ScenesOptions, ctx: FindContext) -> List[SourceItem]:
    if opts.image_size < 12:
        raise SpeechBudgetError(f"image_size must be at least 12 pixels, got {opts.image_size}")
    scenes = plan_scenes(opts.scenes, seed=opts.seed, distractor_fraction=opts.distractors)
    captions = plan_captions(scenes, opts.captions_per_scene, opts.voices, seed=opts.seed)
    root = Path(ctx.corpus_dir)
    images = run_map(
        ctx.executor, render, [(s, root / "images", opts.image_size) for s in scenes], "rendering"
    )
    image_of = {s.id: str(p) for s, p in zip(scenes, images)}
    problems = check_images(image_of.values(), ctx.executor)
    wavs = run_map(
        ctx.executor, synthesize, [(c.utterance, root / "synth") for c in captions], "synthesizing"
    )
    items = []
    for c, wav in zip(captions, wavs):
        u, image = c.utterance, image_of[c.scene_id]
        items.append(
            SourceItem(
                id=u.id,
                audio=str(wav),
                split=u.split,
                text=u.text,
                speaker=u.speaker,
                custom={"image": image, "image_id": c.scene_id, "voice": f"{u.voice}+{u.variant}"},
                problem=problems[image],
            )
        )
    return items


SOURCE = Source(
    "synthetic-scenes",
    "Rendered shape scenes with spoken captions in many voices (paired speech-image data), no download.",
    ScenesOptions,
    find_items,
    ("speechbudget prepare synthetic-scenes --scenes 400 --captions-per-scene 3 --voices 32 --out data/",),
)
