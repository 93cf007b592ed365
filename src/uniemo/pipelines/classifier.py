"""The understanding model as a user meets it: load a checkpoint, classify images, get features.

Example:
    >>> from uniemo import EmotionClassifier
    >>> clf = EmotionClassifier.from_pretrained("runs/demo/understanding")   # a run dir, checkpoint dir or hub id
    >>> pred = clf.predict(["photo.jpg"])[0]
    >>> pred.label, round(pred.probability, 3), pred.sentiment
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from uniemo import hub
from uniemo.checkpoint import CONFIG_FILE, JOINT_KIND, UNDERSTANDING_KIND, resolve_checkpoint
from uniemo.constants import positive_mask
from uniemo.data.datasets import EmotionImageDataset, Sample, collate
from uniemo.data.images import draft_size, load_image
from uniemo.data.transforms import ClipTransform
from uniemo.models.understanding import ExpertQueryCLIP, UnderstandingOutput

KIND = UNDERSTANDING_KIND
__all__ = ["JOINT_KIND", "KIND", "EmotionClassifier", "Prediction", "predict_dataset"]


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        label: the most probable class name.
        probability: its probability.
        top: (name, probability) pairs, most probable first (``top_k`` of them).
        sentiment: ``{"positive": p, "negative": 1 - p}`` summed over the emotions when every class is an EmoSet
            emotion, else None.
        source: the path the image came from, when it came from one.
    """

    label: str
    probability: float
    top: list[tuple[str, float]]
    sentiment: dict[str, float] | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.source, "label": self.label, "probability": round(self.probability, 6)}
        out["top"] = [{"emotion": n, "probability": round(p, 6)} for n, p in self.top]
        if self.sentiment is not None:
            out["sentiment"] = {k: round(v, 6) for k, v in self.sentiment.items()}
        return out


@dataclass
class EmotionClassifier:
    """An :class:`ExpertQueryCLIP` with its class names, attribute vocabularies and preprocessing.

    Attributes:
        model: the network (eval mode).
        classes: class names in index order.
        scene_vocab / object_vocab: the attribute names its queries were aligned to.
        meta: the checkpoint's ``model.json``.
        config_yaml: the resolved config of the run that trained it (``config.yaml``), when known.
        card: the ``uniemo`` block of the checkpoint's model card (:func:`uniemo.hub.read_card`: data, training
            settings, measured figures with their N), when it has one.
    """

    model: ExpertQueryCLIP
    classes: list[str]
    scene_vocab: list[str] = field(default_factory=list)
    object_vocab: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    config_yaml: str | None = None
    card: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        self.transform = ClipTransform(self.model.image_size)
        mask = positive_mask(self.classes)
        self._positive = None if mask is None else torch.tensor(mask)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", revision: str | None = None
    ) -> EmotionClassifier:
        """Loads a checkpoint directory, a run directory (its ``best/``) or a hub id (``owner/name`` at
        ``revision``, through the hub cache: offline when ``HF_HUB_OFFLINE=1``).

        Raises:
            CheckpointError: missing files, another kind or architecture, pickle weights, or a hub id that is
                neither cached nor reachable.
        """
        directory = resolve_checkpoint(path, revision)
        model, meta = ExpertQueryCLIP.load(directory)
        config = directory / CONFIG_FILE
        return cls(
            model.to(device),
            list(meta["classes"]),
            meta.get("scene_vocab", []),
            meta.get("object_vocab", []),
            meta,
            config.read_text() if config.is_file() else None,
            hub.read_card(directory),
        )

    def save_pretrained(self, directory: str | Path, config_yaml: str | None = None) -> None:
        """Writes a checkpoint directory that :meth:`from_pretrained` reads (atomically: it replaces ``directory``)
        with ``config_yaml`` (default: the run config it was loaded with)."""
        vocabs = {"scene_vocab": list(self.scene_vocab), "object_vocab": list(self.object_vocab)}
        config_yaml = config_yaml if config_yaml is not None else self.config_yaml
        self.model.save_pretrained(directory, self.classes, config_yaml, **vocabs, extra=self.meta.get("extra") or {})

    def push_to_hub(self, repo_id: str, evaluations: list[str | Path] = (), **kwargs: Any) -> str:
        """Publishes the model as the hub repository ``repo_id`` with a generated model card (see
        :func:`uniemo.hub.push_to_hub` for ``evaluations``, ``revision``, ``private`` and ``token``); returns the
        commit's URL."""
        with tempfile.TemporaryDirectory(prefix="uniemo-") as tmp:
            self.save_pretrained(Path(tmp) / "checkpoint")
            return hub.push_to_hub(Path(tmp) / "checkpoint", repo_id, evaluations=evaluations, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or paths → (B, 3, S, S) pixel values. Paths are read with :func:`load_image`."""
        draft = draft_size(self.transform.image_size)  # as the dataset path decodes, so both give the same pixels
        pils = [load_image(im, draft) if isinstance(im, (str, Path)) else im.convert("RGB") for im in images]
        return torch.stack([self.transform(im) for im in pils]).to(self.device)

    @torch.no_grad()
    def features(self, images: list[Image.Image | str | Path], need_attention: bool = False) -> UnderstandingOutput:
        """Logits, class token, scene/object features (and attention maps) of a batch of images."""
        return self.model(self.preprocess(images), need_attention=need_attention)

    def probabilities(self, images: list[Image.Image | str | Path], batch_size: int = 32) -> torch.Tensor:
        """(N, K) class probabilities."""
        chunks = [
            self.features(images[i : i + batch_size]).logits.float().softmax(-1).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.classes))

    def predict(self, images: list[Image.Image | str | Path], top_k: int | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image (all classes when ``top_k`` is None)."""
        probs = self.probabilities(images)
        sources = [str(im) if isinstance(im, (str, Path)) else None for im in images]
        return [self.to_prediction(p, top_k, s) for p, s in zip(probs, sources)]

    def predict_files(
        self,
        paths: list[str | Path],
        top_k: int | None = None,
        batch_size: int = 32,
        num_workers: int = 1,
        progress: bool = False,
    ) -> Iterator[tuple[Path, Prediction | None, str | None]]:
        """Classifies image files in batches, decoding in ``num_workers`` processes while the model runs.

        Yields, in input order, ``(path, prediction, None)`` for each readable image and
        ``(path, None, message)`` for each unreadable one (which is skipped, not raised).
        """
        paths = [Path(p) for p in paths]
        dataset = EmotionImageDataset([Sample(p, -1) for p in paths], self.transform, on_bad_image="skip")
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
        )
        bar = tqdm(total=len(paths), desc="classifying", disable=not progress, leave=False)
        for batch in loader:
            results: dict[int, tuple[Prediction | None, str | None]] = {i: (None, m) for i, m in batch["bad"]}
            if "pixel_values" in batch:
                with torch.no_grad():
                    probs = self.model(batch["pixel_values"].to(self.device)).logits.float().softmax(-1).cpu()
                for index, p in zip(batch["index"].tolist(), probs):
                    results[index] = (self.to_prediction(p, top_k, str(paths[index])), None)
            for index in sorted(results):
                yield paths[index], *results[index]
            bar.update(len(results))
        bar.close()

    def to_prediction(self, probs: torch.Tensor, top_k: int | None = None, source: str | None = None) -> Prediction:
        """A :class:`Prediction` from one (K,) probability vector."""
        k = len(self.classes) if top_k is None else max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k)
        top = [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        sentiment = None
        if self._positive is not None:
            positive = float(probs[self._positive].sum())
            sentiment = {"positive": positive, "negative": 1.0 - positive}
        return Prediction(top[0][0], top[0][1], top, sentiment, source)


@torch.no_grad()
def predict_dataset(
    model: ExpertQueryCLIP,
    dataset: EmotionImageDataset,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Runs ``model`` over a dataset: (probabilities (N, K), labels (N,), sample indices (N,), skipped messages)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, shuffle=False
    )
    probs, labels, indices, bad = [], [], [], []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        bad.extend(message for _, message in batch["bad"])
        if "pixel_values" not in batch:
            continue
        logits = model(batch["pixel_values"].to(device)).logits.float()
        probs.append(logits.softmax(-1).cpu().numpy())
        labels.append(batch["label"].numpy())
        indices.append(batch["index"].numpy())
    model.train(was_training)
    k = model.num_classes
    if not probs:
        return np.zeros((0, k), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), bad
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(indices), bad
