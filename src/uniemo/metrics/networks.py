"""The networks the generation metrics read images with (METHOD §7), each loaded from a real checkpoint.

* :class:`ClipNetwork` — a pretrained CLIP (both towers): projected image embeddings for Sem-D and for the
  Emo-A classifier, zero-shot probabilities over class names for Sem-C, and optionally FID features.
* :class:`EmotionFeatureClassifier` — the Emo-A classifier: a two-layer head on L2-normalised CLIP image
  embeddings, trained on a dataset's training split by :func:`train_emotion_classifier` (``uniemo train
  emo-classifier``); the same head is METHOD §3's prior network h.
* :func:`load_inception` — the standard FID network (Inception-V3 pool features, 2048-d) through torch-fidelity.

A network that is not there is never replaced silently: the error names the file that is needed, where it goes,
and the explicit alternative.

Symbols: N images, d CLIP embedding width, K emotions, S CLIP input side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from uniemo.checkpoint import atomic_directory, load_weights, read_meta, resolve_checkpoint, save_model
from uniemo.config import EmoClassifierConfig
from uniemo.constants import CLIP_MEAN, CLIP_STD
from uniemo.data.datasets import EmotionImageDataset, Sample, collate, open_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError, DataError, MetricNetworkError
from uniemo.metrics.lpips import _read_state_dict
from uniemo.models.alpha import PriorHead, train_prior_head
from uniemo.models.factory import (
    STANDIN,
    check_tokenizer,
    from_pretrained_or_explain,
    is_architecture_name,
    resolve_spec,
)

logger = logging.getLogger(__name__)

EMO_CLASSIFIER_KIND = "emotion-feature-classifier"
#: torch-fidelity's Inception-V3 FID weights (converted from TensorFlow's FID graph): the file it downloads.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class ClipPreprocess:
    """PIL image → (3, S, S) CLIP input: shortest-side bicubic resize, centre crop, [0, 255] → [0, 1], normalise.

    ``double_rescale`` reproduces EmoGen's Sem-D defect on purpose (``--legacy``): its images were already in
    [0, 1] when CLIP's processor divided by 255 again, so CLIP saw nearly black images.
    """

    def __init__(self, image_size: int, double_rescale: bool = False) -> None:
        self.image_size = image_size  # read by EmotionImageDataset for JPEG draft decoding
        self.view = ClipTransform(image_size).view
        self.double_rescale = double_rescale
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image, rng: Any = None) -> torch.Tensor:
        array = np.asarray(self.view(image.convert("RGB")), dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
        if self.double_rescale:
            array = array / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - self.mean) / self.std  # (3, S, S)


class ClipNetwork:
    """A pretrained CLIP read for metrics: projected image embeddings and zero-shot class probabilities.

    Args:
        spec: a hub id, a local directory with a full ``CLIPModel`` checkpoint, or ``uniemo-standin``.
        device: where it runs.
        double_rescale: EmoGen's preprocessing defect (see :class:`ClipPreprocess`); only for ``--legacy``.

    Raises:
        MetricNetworkError: ``spec`` names a random architecture (a metric needs trained weights).
        CheckpointError: the checkpoint cannot be loaded.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu", double_rescale: bool = False) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        if is_architecture_name(spec):
            raise MetricNetworkError(
                f"'{spec}' is a random architecture; the metrics need a pretrained CLIP (a hub id in the local "
                f"cache, a local CLIP directory, or {STANDIN} on the built-in dataset)"
            )
        path = resolve_spec(spec, "clip")
        instead = f"a CLIP checkpoint with both towers (a hub id in the local cache or a directory), or {STANDIN}"
        self.spec = spec
        self.model = from_pretrained_or_explain(CLIPModel, path, "the metrics' CLIP", instead, dtype=torch.float32)
        self.model.eval().requires_grad_(False).to(device)
        self.tokenizer = from_pretrained_or_explain(CLIPTokenizer, path, "the metrics' CLIP tokenizer", instead)
        check_tokenizer(self.tokenizer, spec)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.preprocess = ClipPreprocess(self.image_size, double_rescale)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed pixels → (N, d) projected image embeddings (not normalised)."""
        out = self.model.vision_model(pixel_values=pixels.to(self.device))
        return self.model.visual_projection(out.pooler_output).float().cpu()

    def embed_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """(N, d) projected CLIP image embeddings (not normalised) of PIL images."""
        chunks = [
            self.embed_pixels(torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.projection_dim)

    def embed_samples(
        self, samples: list[Sample], batch_size: int = 64, num_workers: int = 0
    ) -> tuple[torch.Tensor, list[int]]:
        """(N', d) embeddings of the readable images among ``samples`` (unreadable ones are skipped and logged),
        and the indices of those N' samples; ``num_workers`` processes decode while the network runs."""
        dataset = EmotionImageDataset(samples, self.preprocess, on_bad_image="skip")
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=collate,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )
        chunks, indices, bad = [], [], []
        for batch in loader:
            bad.extend(batch["bad"])
            if "pixel_values" in batch:
                chunks.append(self.embed_pixels(batch["pixel_values"]))
                indices.extend(batch["index"].tolist())
        for _, message in bad[:3]:
            logger.warning("skipped: %s", message)
        if len(bad) > 3:
            logger.warning("skipped %d unreadable images in all", len(bad))
        if not chunks:
            return torch.zeros(0, self.model.config.projection_dim), []
        return torch.cat(chunks), indices

    @torch.no_grad()
    def text_embeddings(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(len(texts), d) L2-normalised projected text embeddings."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt")
            out = self.model.get_text_features(
                input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
            )
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            chunks.append(F.normalize(out.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def zero_shot(
        self, image_embeds: torch.Tensor, class_names: list[str], template: str = "a photo of a {}."
    ) -> torch.Tensor:
        """(N, C) zero-shot probabilities: softmax over classes of CLIP's scaled cosine similarity."""
        if not class_names:
            raise ConfigError("zero-shot classification needs at least one class name")
        text = self.text_embeddings([template.format(n.replace("_", " ")) for n in class_names])
        scale = float(self.model.logit_scale.exp())
        return (scale * F.normalize(image_embeds.float(), dim=-1) @ text.T).softmax(dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Cached image features


def _samples_key(network: ClipNetwork, samples: list[Sample]) -> str:
    """A key that changes when the network, its preprocessing or any image file (name, size, mtime) changes."""
    digest = hashlib.sha256()
    model_dir = Path(resolve_spec(network.spec, "clip"))
    weights = sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []
    digest.update(json.dumps([network.spec, network.preprocess.double_rescale, network.image_size]).encode())
    for w in weights:
        digest.update(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}".encode())
    for s in samples:
        st = s.path.stat() if s.path.exists() else None
        digest.update(f"{s.path.resolve()}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return digest.hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$UNIEMO_CACHE``, else ``~/.cache/uniemo``: where features reused across runs are kept."""
    return Path(os.environ.get("UNIEMO_CACHE") or Path.home() / ".cache" / "uniemo")


def cached_embeddings(
    network: ClipNetwork,
    samples: list[Sample],
    cache_dir: str | Path | None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[torch.Tensor, list[int]]:
    """:meth:`ClipNetwork.embed_samples`, stored in ``cache_dir`` as safetensors and read back when nothing
    changed (same network, same files). ``cache_dir=None`` computes without caching."""
    if cache_dir is None:
        return network.embed_samples(samples, batch_size, num_workers)
    file = Path(cache_dir) / f"clip-features-{_samples_key(network, samples)}.safetensors"
    if file.is_file():
        try:
            stored = load_file(str(file))
            return stored["features"], stored["indices"].tolist()
        except Exception:  # a damaged cache file is recomputed, never trusted
            logger.warning("ignoring the unreadable feature cache %s", file)
    features, indices = network.embed_samples(samples, batch_size, num_workers)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    save_file({"features": features.contiguous(), "indices": torch.tensor(indices, dtype=torch.long)}, str(tmp))
    tmp.replace(file)
    return features, indices


# --------------------------------------------------------------------------------------------------------------
# The Emo-A classifier (and prior head): a two-layer head on CLIP image embeddings


@dataclass
class EmotionFeatureClassifier:
    """An emotion classifier on L2-normalised CLIP image embeddings: Emo-A's judge and the prior network h.

    Attributes:
        head: Linear(d, hidden) → ReLU → Linear(hidden, K).
        classes: emotion names in index order.
        clip: the CLIP spec whose image embeddings it reads.
        meta: what ``model.json`` holds (training data, accuracies, N).
    """

    head: PriorHead
    classes: list[str]
    clip: str
    meta: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, d) CLIP image embeddings (normalised here) → (N, K) emotion probabilities."""
        return self.head(F.normalize(embeddings.float(), dim=-1)).softmax(dim=-1)

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes ``model.json`` + ``model.safetensors`` atomically."""
        meta = {
            **self.meta,
            "kind": EMO_CLASSIFIER_KIND,
            "classes": self.classes,
            "clip": self.clip,
            "dim": self.head[0].in_features,
            "hidden": self.head[0].out_features,
        }
        with atomic_directory(directory) as tmp:
            save_model(tmp, self.head, meta)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> EmotionFeatureClassifier:
        """Loads what :meth:`save_pretrained` wrote (``uniemo train emo-classifier --out``)."""
        directory = resolve_checkpoint(path)
        meta = read_meta(directory, EMO_CLASSIFIER_KIND)
        head = PriorHead(int(meta["dim"]), len(meta["classes"]), int(meta["hidden"]))
        load_weights(directory, head)
        return cls(head.eval(), list(meta["classes"]), str(meta["clip"]), meta)


_EMO = EmoClassifierConfig()


def train_emotion_classifier(
    data: str | Path,
    clip: str,
    out_dir: str | Path,
    data_format: str = _EMO.data_format,
    fold: int = _EMO.fold,
    epochs: int = _EMO.epochs,
    hidden: int = _EMO.hidden,
    lr: float = _EMO.lr,
    seed: int = _EMO.seed,
    cache_dir: str | Path | None = _EMO.cache_dir,
    device: str | torch.device = _EMO.device,
) -> dict[str, Any]:
    """Trains the Emo-A classifier on the CLIP image embeddings of a dataset's training split.

    Embeddings are cached in ``cache_dir`` (default ``<out_dir>-feature-cache``, beside ``out_dir``), so a second
    run with other head settings reads no image. Reports val and test accuracy (when those splits exist) and writes the
    classifier to ``out_dir``.

    Returns:
        ``{"out", "classes", "num_train", "val_accuracy", "test_accuracy", "skipped"}``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        try:
            if not (out / "model.json").is_file():
                raise CheckpointError("not a checkpoint")
            read_meta(out, EMO_CLASSIFIER_KIND)  # replacing an earlier emotion classifier is fine
        except CheckpointError:
            raise ConfigError(f"{out} already holds something else; choose another --out") from None
    cache = Path(cache_dir) if cache_dir else out.parent / f"{out.name}-feature-cache"
    dataset = open_dataset(data, data_format, fold)
    network = ClipNetwork(clip, device)
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    skipped = 0
    for name in ("train", "val", "test"):
        samples = dataset.splits.get(name) or []
        if not samples:
            continue
        feats, idx = cached_embeddings(network, samples, cache)
        skipped += len(samples) - len(idx)
        splits[name] = (feats, torch.tensor([samples[i].label for i in idx], dtype=torch.long))
    if "train" not in splits or len(splits["train"][1]) == 0:
        raise DataError(f"{dataset.root} has no readable training image to train the emotion classifier on")
    x, y = splits["train"]
    head = train_prior_head(x, y, len(dataset.classes), epochs=epochs, lr=lr, hidden=hidden, seed=seed)
    clf = EmotionFeatureClassifier(head, list(dataset.classes), clip)
    accuracy = {}
    for name in ("val", "test"):
        if name in splits and len(splits[name][1]):
            feats, labels = splits[name]
            accuracy[name] = float((clf.probabilities(feats).argmax(1) == labels).float().mean())
    clf.meta = {
        "dataset": str(dataset.root),
        "num_train": len(y),
        "epochs": epochs,
        "seed": seed,
        "val_accuracy": accuracy.get("val"),
        "test_accuracy": accuracy.get("test"),
    }
    clf.save_pretrained(out)
    return {
        "out": str(out),
        "classes": clf.classes,
        "num_train": len(y),
        "val_accuracy": accuracy.get("val"),
        "test_accuracy": accuracy.get("test"),
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------------------------
# FID's Inception-V3


def inception_weights_path(weights: str | Path | None = None) -> Path:
    """Where the FID Inception weights are read from: ``weights``, else torch hub's checkpoint cache."""
    if weights:
        return Path(weights).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class InceptionFeatures(torch.nn.Module):
    """The standard FID network: (N, 3, H, W) uint8 images → (N, 2048) Inception-V3 pool features.

    It is torch-fidelity's TensorFlow-compatible Inception-V3 (the network of published FID numbers), built
    from its weight file on disk. The file is read here without unpickling code (``torch.load`` with
    ``weights_only=True``, or a ``.safetensors`` file) and only its tensors, saved again to a temporary file, are
    given to torch-fidelity's constructor: torch-fidelity itself would read the user's file with
    ``torch.load(weights_only=False)``, which runs whatever the pickle names, and would download the weights
    when given no file.

    Raises:
        MetricNetworkError: torch-fidelity is not importable, or the weight file is missing.
        CheckpointError: the file cannot be read as tensors, or holds other keys or shapes.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        path = inception_weights_path(weights)
        try:
            import torch_fidelity
            from torch_fidelity import feature_extractor_inceptionv3 as fidelity
        except Exception:  # ImportError, or a torchvision that does not load against this torch
            raise MetricNetworkError(
                "FID's Inception-V3 needs the torch-fidelity package (pip install torch-fidelity; it needs "
                "torchvision) and its weight file at " + str(path) + "; or pass --fid-network clip (CLIP image "
                "features: comparable only between runs with the same CLIP, not with published FID)"
            ) from None
        if not path.is_file():
            raise MetricNetworkError(
                f"FID's Inception-V3 weights are missing: put {INCEPTION_FILE} at {path} (or pass "
                "--inception-weights FILE); or pass --fid-network clip (CLIP image features: comparable only "
                "between runs with the same CLIP, not with published FID)"
            )
        state = _read_state_dict(path)
        try:
            # torch-fidelity reads a weight file with torch.load(weights_only=False): it is handed a file written
            # here from the tensors read above, so that what it unpickles is only those tensors.
            with tempfile.TemporaryDirectory(prefix="uniemo-inception-") as tmp:
                plain = Path(tmp) / INCEPTION_FILE
                torch.save(state, plain)
                net = fidelity.FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(plain)
                )
        except TypeError:  # a version whose constructor takes no weights path
            raise MetricNetworkError(
                f"torch-fidelity {getattr(torch_fidelity, '__version__', '?')} builds its Inception-V3 in a way "
                "uniemo does not know (tested with 0.4.0); install torch-fidelity 0.4, or pass --fid-network clip"
            ) from None
        except RuntimeError as error:  # missing or unexpected keys, wrong shapes
            detail = " ".join(str(error).split())
            raise CheckpointError(
                f"{path} does not hold torch-fidelity's Inception-V3 weights: {detail[:400]}"
            ) from error
        self.net = net
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stays in eval mode: in train mode the batch norms would normalise with each batch's statistics."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 images on the network's device → (N, 2048) float32 features.

        Any H × W: torch-fidelity resizes to 299 × 299 inside, with TensorFlow 1.x's bilinear interpolation.
        """
        return self.net(images)[0].float()


def load_inception(weights: str | Path | None = None) -> InceptionFeatures:
    """The FID network (see :class:`InceptionFeatures`); :class:`MetricNetworkError` says what is missing."""
    return InceptionFeatures(weights)


def uint8_batch(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images → (N, 3, H, W) uint8 (bicubic resize to ``size`` × ``size`` when given)."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
