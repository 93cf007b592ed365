"""The four generation modes of METHOD §5, each measured by a judge of the built-in dataset
(:class:`~uniemo.metrics.judge.AttributeJudge`): does the emotion reach the images?

* emotions: ``per_emotion`` images of every emotion → Emo-A, 2-class (valence) Emo-A, per emotion;
* transfer: the same onto content ("a house") → Emo-A, valence, and how often the content is drawn;
* fusion: two emotions at several weights → the share of images read as each;
* reference: one image per real reference image → agreement with the reference's true emotion.

Every figure comes with its N and a 95 % Wilson interval. Image i of a call uses seed + i, so two runs with the
same checkpoint and settings give the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from uniemo.data.datasets import open_dataset, per_class
from uniemo.metrics.judge import AttributeJudge, judge_images, valence, wilson_interval


def judge_emotions(
    pipe: Any, judge: AttributeJudge, per_emotion: int, prompt: str | None = None, **sampling: Any
) -> tuple[dict[str, Any], dict[str, list[Image.Image]]]:
    """``per_emotion`` images of every emotion of ``pipe`` (optionally onto ``prompt``), read by ``judge``."""
    images = {e: pipe(e, prompt=prompt, num_images=per_emotion, **sampling).images for e in pipe.classes}
    return judge_images(judge, images, pipe.classes), images


def judge_transfer(
    pipe: Any,
    judge: AttributeJudge,
    per_emotion: int,
    content: str = "house",
    without: dict[str, list[Image.Image]] | None = None,
    **sampling: Any,
) -> tuple[dict[str, Any], dict[str, list[Image.Image]]]:
    """Emotion transfer onto "a ``content``": the judge's Emo-A and valence, and ``content_share``, how often the
    judge sees the content as the main object (with its interval). ``without``: images of the same emotions
    generated without the prompt, the control — how often the content appears anyway (``content_share_without``)."""
    result, images = judge_emotions(pipe, judge, per_emotion, prompt=f"a {content}", **sampling)
    result.update(content=content, **_content_share(judge, images, content))
    if without is not None:
        control = _content_share(judge, without, content)
        result.update(
            content_share_without=control["content_share"], content_interval_without=control["content_interval"]
        )
    return result, images


def _content_share(judge: AttributeJudge, images: dict[str, list[Image.Image]], content: str) -> dict[str, Any]:
    seen = judge.read([im for group in images.values() for im in group])["object"]
    hits = sum(o == content for o in seen)
    return {"content_share": hits / len(seen), "content_interval": wilson_interval(hits, len(seen))}


def judge_fusion(
    pipe: Any,
    judge: AttributeJudge,
    per_weight: int,
    first: str = "amusement",
    second: str = "sadness",
    weights: Sequence[float] = (1.0, 0.75, 0.5, 0.25, 0.0),
    **sampling: Any,
) -> tuple[dict[str, Any], list[list[Image.Image]]]:
    """Emotion fusion ``first`` w + ``second`` (1 − w) for each w in ``weights``: per weight, the share of images
    the judge reads as ``first``, as ``second`` and as positive. ``monotonic``: the share read as ``first`` never
    rises as its weight falls."""
    rows, images = [], []
    for w in weights:
        mix = {first: w, second: 1.0 - w}
        generated = pipe({k: v for k, v in mix.items() if v > 0}, num_images=per_weight, **sampling).images
        read = judge.emotions(generated)
        n = len(read)
        firsts, seconds = read.count(first), read.count(second)
        positive = sum(valence(r) == 0 for r in read)
        rows.append(
            {
                "weight": w,
                "n": n,
                first: firsts / n,
                f"{first}_interval": wilson_interval(firsts, n),
                second: seconds / n,
                "positive": positive / n,
            }
        )
        images.append(generated)
    shares = [r[first] for r in rows]
    monotonic = all(a >= b for a, b in zip(shares, shares[1:]))
    return {"first": first, "second": second, "rows": rows, "monotonic": monotonic}, images


def judge_reference(
    pipe: Any, judge: AttributeJudge, references: Sequence[tuple[Path, str]], **sampling: Any
) -> tuple[dict[str, Any], list[Image.Image]]:
    """One image per (reference image, its true emotion), image i seeded seed + i: the share the judge reads as the
    reference's true emotion, and as its valence. The controls ``shuffled`` / ``valence_shuffled``: the same shares
    expected when the references are paired with the images at random (Σ_e share read as e · share of references
    of e), so a generator that draws one emotion whatever the reference is scored at its real worth, not against
    1/K."""
    images = pipe(reference=[path for path, _ in references], num_images=1, **sampling).images
    truth = [emotion for _, emotion in references]
    read = judge.emotions(images)
    hits = sum(r == t for r, t in zip(read, truth))
    same_valence = sum(valence(r) == valence(t) for r, t in zip(read, truth))
    n = len(truth)

    def shuffled(of: Any) -> float:
        mapped_read, mapped_truth = [of(r) for r in read], [of(t) for t in truth]
        return sum(mapped_read.count(v) * mapped_truth.count(v) for v in set(mapped_truth)) / (n * n)

    result = {
        "agreement": hits / n,
        "interval": wilson_interval(hits, n),
        "valence": same_valence / n,
        "n": n,
        "chance": 1 / len(pipe.classes),
        "shuffled": shuffled(lambda e: e),
        "valence_shuffled": shuffled(valence),
    }
    return result, images


def reference_samples(root: str | Path, per_emotion: int, split: str = "test") -> list[tuple[Path, str]]:
    """The first ``per_emotion`` images of every emotion in a split, with their true emotion."""

    dataset = open_dataset(root)
    return [(s.path, dataset.classes[s.label]) for s in per_class(dataset.split(split), per_emotion)]
