"""The generation evaluation suite (METHOD §7): FID, LPIPS, Emo-A, Sem-C and Sem-D of images grouped by target
emotion, each reported with its N and the network it was read with.

>>> suite = GenerationEvaluator(GenerationMetricsConfig(emo_classifier="runs/emo-clf"), "data/EmoSet")  # +SKIP
>>> report = suite.evaluate(read_generated("generated/", suite.classes))                            # +SKIP

Protocol choices, and where ``legacy=True`` (EmoGen's protocol, for comparison with published numbers) differs:

======================  ==============================================  ============================================
choice                  default                                         legacy (EmoGen)
======================  ==============================================  ============================================
FID real reference      the reference dataset's ``split`` (test)        the whole dataset (every split)
Sem-D preprocessing     images in [0, 255] → CLIP's normalisation       images rescaled to [0, 1] twice (a defect)
======================  ==============================================  ============================================

Everything else is the same in both: LPIPS (AlexNet, inputs in [-1, 1]) and Sem-D over the same random pairs of
images of the same emotion (``pairs`` per emotion, fixed ``seed``); Emo-A from a two-layer head on CLIP image
embeddings; Sem-C = mean of max(top scene probability, top object probability).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from uniemo.config import GenerationMetricsConfig
from uniemo.constants import positive_mask
from uniemo.data.datasets import EmotionDataset, open_dataset
from uniemo.data.images import is_image_file, load_image
from uniemo.errors import ConfigError, DataError
from uniemo.metrics import generation as gm
from uniemo.metrics.lpips import load_lpips, lpips_distances
from uniemo.metrics.networks import ClipNetwork, EmotionFeatureClassifier, load_inception, uint8_batch

logger = logging.getLogger(__name__)

METRICS = ("fid", "lpips", "emo-a", "sem-c", "sem-d")


def read_generated(directory: str | Path, classes: list[str]) -> dict[str, list[Path]]:
    """Image files of ``directory/<emotion>/`` (the layout ``uniemo generate --emotion all`` writes).

    Raises:
        DataError: no such directory, a sub-folder that is not one of ``classes``, or no image at all.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"no such directory of generated images: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise DataError(
            f"{root} has sub-folders that are not emotions of the reference dataset: {', '.join(unknown)} "
            f"(expected {root}/<emotion>/*.png with emotion one of {', '.join(classes)})"
        )
    found = {p.name: sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f)) for p in folders}
    found = {e: files for e, files in found.items() if files}
    if not found:
        raise DataError(f"{root} holds no images in <emotion>/ sub-folders (expected e.g. {root}/{classes[0]}/x.png)")
    return {e: found[e] for e in classes if e in found}


def load_generated(files: dict[str, list[Path]]) -> tuple[dict[str, list[Image.Image]], list[str]]:
    """Reads the images; unreadable ones are left out and returned as messages."""
    images: dict[str, list[Image.Image]] = {}
    bad: list[str] = []
    for emotion, paths in files.items():
        for path in paths:
            try:
                images.setdefault(emotion, []).append(load_image(path))
            except DataError as err:
                bad.append(str(err))
    return images, bad


def _mean_spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}


class GenerationEvaluator:
    """Loads the networks once and evaluates any number of image sets against one reference dataset.

    Args:
        cfg: what to compute and with which networks.
        reference: the real dataset (any format uniemo reads) or an opened :class:`EmotionDataset`.

    Raises:
        ConfigError / MetricNetworkError / CheckpointError: an unknown metric, a missing network (the message
            says which file goes where and what the explicit alternative is), a bad checkpoint.
    """

    def __init__(self, cfg: GenerationMetricsConfig, reference: str | Path | EmotionDataset) -> None:
        bad = sorted(set(cfg.skip) - set(METRICS))
        if bad:
            raise ConfigError(f"unknown metric(s) to skip: {', '.join(bad)}; the metrics are {', '.join(METRICS)}")
        if cfg.fid_network not in ("inception", "clip"):
            raise ConfigError(f"fid_network must be 'inception' or 'clip', got {cfg.fid_network!r}")
        self.cfg = cfg
        self.wanted = [m for m in METRICS if m not in cfg.skip]
        self.dataset = reference if isinstance(reference, EmotionDataset) else open_dataset(reference)
        self.classes = list(self.dataset.classes)
        self.emo_classifier = None
        if "emo-a" in self.wanted:
            if not cfg.emo_classifier:
                raise ConfigError(
                    "Emo-A needs an emotion classifier on CLIP features: train one with `uniemo train emo-classifier "
                    "DATA --clip CLIP --out DIR` and pass --emo-classifier DIR (or --skip emo-a)"
                )
            self.emo_classifier = EmotionFeatureClassifier.from_pretrained(cfg.emo_classifier)
            if self.emo_classifier.classes != self.classes:
                raise ConfigError(
                    f"the Emo-A classifier's emotions ({', '.join(self.emo_classifier.classes)}) differ from the "
                    f"reference dataset's ({', '.join(self.classes)})"
                )
        clip_spec = cfg.clip or (self.emo_classifier.clip if self.emo_classifier else None)
        needs_clip = {"emo-a", "sem-c", "sem-d"} & set(self.wanted) or (
            "fid" in self.wanted and cfg.fid_network == "clip"
        )
        if needs_clip and not clip_spec:
            raise ConfigError("Sem-C, Sem-D and CLIP-feature FID need a CLIP: pass --clip (a hub id or directory)")
        self.clip = ClipNetwork(clip_spec, cfg.device) if needs_clip else None
        # Sem-D reads CLIP with EmoGen's double rescaling under --legacy; everything else reads it correctly.
        self.clip_legacy = None
        if cfg.legacy and needs_clip:
            self.clip_legacy = ClipNetwork(clip_spec, cfg.device, double_rescale=True)
        self.inception = None
        if "fid" in self.wanted and cfg.fid_network == "inception":
            self.inception = load_inception(cfg.inception_weights).to(cfg.device)
        self.lpips = None
        if "lpips" in self.wanted:
            self.lpips = load_lpips(cfg.lpips_alexnet, cfg.lpips_linear, device=cfg.device)
        self.scene_names, self.object_names = self._sem_classes() if "sem-c" in self.wanted else ([], [])
        self._reference_features: dict[str, torch.Tensor] | None = None

    # ---- networks ---------------------------------------------------------------------------------------------
    def _sem_classes(self) -> tuple[list[str], list[str]]:
        spec = self.cfg.sem_classes
        if spec == "dataset":
            scenes, objects = self.dataset.vocabularies("train")
            if not scenes and not objects:
                raise ConfigError(
                    f"{self.dataset.root} has no scene/object annotations to take Sem-C's class names from: pass "
                    "--sem-classes SCENES.txt,OBJECTS.txt (e.g. Places365's and ImageNet's names), or --skip sem-c"
                )
            return scenes, objects
        files = [Path(p) for p in spec.split(",")]
        if len(files) != 2 or not all(f.is_file() for f in files):
            raise ConfigError(
                f"--sem-classes must be 'dataset' or two existing files 'SCENES.txt,OBJECTS.txt', got {spec}"
            )
        names = [[line.strip() for line in f.read_text().splitlines() if line.strip()] for f in files]
        return names[0], names[1]

    def networks(self) -> dict[str, str]:
        """Which network each metric reads images with (for the report)."""
        out = {}
        if "fid" in self.wanted:
            out["fid"] = (
                "Inception-V3 pool3, 2048-d (torch-fidelity)"
                if self.inception is not None
                else f"CLIP image embeddings of {self.clip.spec} (not comparable with published FID)"
            )
        if "lpips" in self.wanted:
            out["lpips"] = "LPIPS v0.1, AlexNet"
        if "emo-a" in self.wanted:
            clf = self.emo_classifier
            out["emo-a"] = f"two-layer head on CLIP image embeddings of {clf.clip} ({self.cfg.emo_classifier})"
        if "sem-c" in self.wanted:
            source = "the reference dataset's" if self.cfg.sem_classes == "dataset" else "the given"
            out["sem-c"] = (
                f"CLIP zero-shot ({self.clip.spec}) over {source} {len(self.scene_names)} scene and "
                f"{len(self.object_names)} object names"
            )
        if "sem-d" in self.wanted:
            out["sem-d"] = f"projected CLIP image embeddings of {self.clip.spec}" + (
                " (legacy: double-rescaled input)" if self.cfg.legacy else ""
            )
        return out

    def sem_c_scores(self, embeds: torch.Tensor) -> np.ndarray:
        """(N,) per-image Sem-C scores of CLIP image embeddings (N, d): max(top scene p, top object p)."""
        n = len(embeds)
        p_scene, p_object = np.zeros((n, 1)), np.zeros((n, 1))  # a missing vocabulary contributes nothing
        if self.scene_names:
            p_scene = self.clip.zero_shot(embeds, self.scene_names, self.cfg.template).numpy()
        if self.object_names:
            p_object = self.clip.zero_shot(embeds, self.object_names, self.cfg.template).numpy()
        return gm.semantic_clarity_scores(p_scene, p_object)

    def _fid_features(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, F) FID features in the order of ``images``. Inception batches images of one size together (real
        datasets mix sizes; torch-fidelity resizes each to 299 px itself, as in published FID)."""
        bs = self.cfg.batch_size
        if self.inception is None:
            return self.clip.embed_images(images, bs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.size, []).append(i)
        out = torch.zeros(len(images), 2048)
        for indices in by_size.values():
            for start in range(0, len(indices), bs):
                chunk = indices[start : start + bs]
                batch = uint8_batch([images[i] for i in chunk]).to(self.cfg.device)
                out[chunk] = self.inception(batch).cpu()
        return out

    def reference_features(self) -> dict[str, torch.Tensor]:
        """FID features of the real reference images, per emotion (computed once)."""
        if self._reference_features is None:
            names = list(self.dataset.splits) if self.cfg.legacy else [self.cfg.split]
            samples = [s for n in names for s in self.dataset.splits.get(n, [])]
            if not samples:
                raise DataError(f"the reference split '{self.cfg.split}' of {self.dataset.root} is empty")
            by_emotion: dict[str, list[torch.Tensor]] = {}
            bs = self.cfg.batch_size
            for start in range(0, len(samples), bs):
                chunk = samples[start : start + bs]
                images, labels = [], []
                for s in chunk:
                    try:
                        images.append(load_image(s.path))
                        labels.append(s.label)
                    except DataError as err:
                        logger.warning("FID reference: skipped %s", err)
                if images:
                    feats = self._fid_features(images)
                    for f, label in zip(feats, labels):
                        by_emotion.setdefault(self.classes[label], []).append(f)
            self._reference_features = {e: torch.stack(v) for e, v in by_emotion.items()}
        return self._reference_features

    # ---- the metrics ------------------------------------------------------------------------------------------
    def evaluate(self, images: dict[str, list[Image.Image]], embeds: torch.Tensor | None = None) -> dict[str, Any]:
        """All wanted metrics of ``images`` (target emotion → PIL images); ``embeds``: their CLIP image embeddings
        in the same order (class order, then image order), when the caller already has them.

        Returns:
            ``{"num_images", "per_emotion_n", "networks", "legacy", <metric>: {...}}``; each metric holds its value,
            its N (images, or pairs) and, where it has one, a per-emotion breakdown and a spread.
        """
        unknown = sorted(set(images) - set(self.classes))
        if unknown:
            raise ConfigError(f"unknown target emotion(s): {', '.join(unknown)}")
        images = {e: v for e, v in images.items() if v}
        if not images:
            raise DataError("no generated image to evaluate")
        order = [e for e in self.classes if e in images]
        all_images = [im for e in order for im in images[e]]
        targets = np.array([self.classes.index(e) for e in order for _ in images[e]])
        report: dict[str, Any] = {
            "num_images": len(all_images),
            "per_emotion_n": {e: len(images[e]) for e in order},
            "networks": self.networks(),
            "legacy": self.cfg.legacy,
        }
        if embeds is None and self.clip is not None:
            embeds = self.clip.embed_images(all_images, self.cfg.batch_size)
        bounds = np.cumsum([0] + [len(images[e]) for e in order])
        span = {e: slice(bounds[i], bounds[i + 1]) for i, e in enumerate(order)}
        pair_sets = {e: gm.sample_pairs(len(images[e]), self.cfg.pairs, self.cfg.seed) for e in order}

        if "emo-a" in self.wanted:
            probs = self.emo_classifier.probabilities(embeds).numpy()
            hits = probs.argmax(1) == targets
            report["emo-a"] = {
                "value": gm.emo_a(probs, targets),
                "n": len(targets),
                "chance": 1 / len(self.classes),
                "per_emotion": {e: float(hits[span[e]].mean()) for e in order},
            }
            positive = positive_mask(self.classes)
            if positive is not None:  # 2-class Emo-A: the predicted emotion has the target's sentiment
                sign = np.asarray(positive)
                report["emo-a"]["two_class"] = float((sign[probs.argmax(1)] == sign[targets]).mean())
        if "sem-c" in self.wanted:
            scores = self.sem_c_scores(embeds)
            report["sem-c"] = {
                "value": float(scores.mean()),
                "n": len(scores),
                "per_emotion": {e: float(scores[span[e]].mean()) for e in order},
            }
        if "sem-d" in self.wanted:
            d_embeds = self.clip_legacy.embed_images(all_images, self.cfg.batch_size) if self.clip_legacy else embeds
            per = {e: gm.semantic_diversity(d_embeds[span[e]], pair_sets[e]) for e in order if len(pair_sets[e])}
            report["sem-d"] = self._pairwise(per, pair_sets)
        if "lpips" in self.wanted:
            per = {}
            for e in order:
                if len(pair_sets[e]):
                    pixels = gm.to_signed_pixels(images[e], images[e][0].width)
                    pairs = pair_sets[e]
                    per[e] = float(lpips_distances(self.lpips, pixels[pairs[:, 0]], pixels[pairs[:, 1]]).mean())
            report["lpips"] = self._pairwise(per, pair_sets)
        if "fid" in self.wanted:
            reference = self.reference_features()
            fake = self._fid_features(all_images)
            per_fid = {}
            for e in order:
                if e in reference and len(reference[e]) >= 2 and span[e].stop - span[e].start >= 2:
                    per_fid[e] = gm.fid_from_features(reference[e], fake[span[e]])
            pooled_real = torch.cat([reference[e] for e in self.classes if e in reference])
            report["fid"] = {
                "value": gm.fid_from_features(pooled_real, fake),
                "n_generated": len(fake),
                "n_reference": len(pooled_real),
                "reference": "whole dataset" if self.cfg.legacy else f"split '{self.cfg.split}'",
                "per_emotion": per_fid,
                "per_emotion_mean": float(np.mean(list(per_fid.values()))) if per_fid else None,
            }
        return report

    @staticmethod
    def _pairwise(per: dict[str, float], pair_sets: dict[str, np.ndarray]) -> dict[str, Any]:
        if not per:
            return {"value": None, "n_pairs": 0, "note": "needs at least 2 images of one emotion"}
        return {
            "value": float(np.mean(list(per.values()))),
            "n_pairs": int(sum(len(pair_sets[e]) for e in per)),
            "spread_over_emotions": _mean_spread(list(per.values())),
            "per_emotion": per,
        }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a suite report: metric, value, N, network."""
    rows = [("metric", "value", "N", "network")]
    nets = report.get("networks", {})
    for name in METRICS:
        if name not in report:
            continue
        r = report[name]
        value = r.get("value")
        if value is None:
            text = "n/a"
        elif name == "emo-a":
            text = f"{value:.2%} (chance {r['chance']:.1%})"
        elif name in ("lpips", "sem-d"):
            text = f"{value:.4f} ± {r['spread_over_emotions']['std']:.4f}"
        else:
            text = f"{value:.4f}" if name != "fid" else f"{value:.2f}"
        n = (
            f"{r['n_pairs']} pairs"
            if "n_pairs" in r
            else f"{r['n_generated']} vs {r['n_reference']}"
            if name == "fid"
            else str(r.get("n", ""))
        )
        rows.append((name, text, n, nets.get(name, "")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows)
