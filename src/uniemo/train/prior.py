"""The prior P(e | a) of emotional correlation (METHOD §3.1) a joint run fills before training: from the
co-occurrence of emotions and attribute names in the training split, or from a linear emotion classifier on a
pretrained CLIP's image embeddings applied to the names' text embeddings (:mod:`uniemo.models.alpha`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from uniemo.config import JointRunConfig
from uniemo.errors import DataError
from uniemo.metrics.networks import ClipNetwork, cached_embeddings, default_cache_dir
from uniemo.models.alpha import classifier_prior, cooccurrence_prior, train_prior_head
from uniemo.models.factory import encode_texts, is_architecture_name, load_clip_text
from uniemo.models.uniemo import UniEmoModel

logger = logging.getLogger(__name__)


def compute_prior(
    cfg: JointRunConfig,
    model: UniEmoModel,
    samples: list,
    scene_vocab: list[str],
    object_vocab: list[str],
    text_spec: str,
    device: Any = "cpu",
    stage1_template: str = "{}",
) -> str:
    """Fills ``model.prior_scene`` / ``prior_object`` (P(e | a), rows sum to 1); returns what was used."""
    k = model.understanding.num_classes
    labels = [s.label for s in samples]
    mode = cfg.joint.prior
    spec = cfg.joint.prior_clip or text_spec
    if mode == "classifier" and is_architecture_name(spec):
        logger.warning(
            "joint.prior=classifier needs a pretrained CLIP, but '%s' is a random architecture: using the "
            "co-occurrence prior instead (set joint.prior_clip to a CLIP checkpoint)",
            spec,
        )
        mode = "cooccurrence"
    if mode == "cooccurrence":
        s_index = {n: i for i, n in enumerate(scene_vocab)}
        o_index = {n: i for i, n in enumerate(object_vocab)}
        scene_ids = [[s_index[x.scene]] if x.scene in s_index else [] for x in samples]
        object_ids = [[o_index[o] for o in x.objects if o in o_index] for x in samples]
        model.prior_scene.copy_(cooccurrence_prior(scene_ids, labels, len(scene_vocab), k))
        model.prior_object.copy_(cooccurrence_prior(object_ids, labels, len(object_vocab), k))
        return "cooccurrence"
    cache = cfg.joint.feature_cache
    cache_dir = None if cache == "" else Path(cache) if cache else default_cache_dir() / "features"
    network = ClipNetwork(spec, device)
    features, indices = cached_embeddings(network, samples, cache_dir, num_workers=cfg.data.num_workers)
    if not indices:
        raise DataError("no readable training image for the classifier prior")
    head = train_prior_head(
        features, torch.tensor([labels[i] for i in indices]), k, epochs=cfg.joint.prior_epochs, seed=cfg.seed
    )
    u = model.understanding
    scene_embeds, object_embeds = u.scene_vocab_embeds, u.object_vocab_embeds
    if spec != text_spec:  # the names must be read in the prior CLIP's own space
        text_model, tokenizer = load_clip_text(spec)
        template = stage1_template
        scene_embeds = encode_texts(text_model.eval(), tokenizer, [template.format(n) for n in scene_vocab])
        object_embeds = encode_texts(text_model, tokenizer, [template.format(n) for n in object_vocab])
    if len(scene_vocab):
        model.prior_scene.copy_(classifier_prior(head, scene_embeds.cpu()))
    if len(object_vocab):
        model.prior_object.copy_(classifier_prior(head, object_embeds.cpu()))
    return f"classifier ({spec})"
