"""Stage 1: train the expert-query understanding model (METHOD §2) on the training engine (:mod:`.loop`).

Read top to bottom: data → attribute text embeddings → model → optimiser → the loop (L_U on each batch; the
validation accuracy every ``eval_every`` steps, a new best written to ``best/``; ``last/`` every ``save_every``
steps and on Ctrl-C, with the optimiser, scheduler and RNG states, so that ``--resume`` continues the same run) →
summary. Models are selected on the validation split only.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from uniemo.config import UnderstandingRunConfig
from uniemo.data.datasets import EmotionImageDataset, label_counts, open_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.losses import understanding_loss
from uniemo.metrics.classification import classification_report
from uniemo.models.architecture import ExpertQueryConfig
from uniemo.models.factory import create_model, encode_texts, load_clip_text
from uniemo.models.understanding import ExpertQueryCLIP
from uniemo.pipelines.classifier import predict_dataset
from uniemo.train.loop import (
    Trainer,
    TrainingError,
    adamw_cosine,
    open_run,
    require,
    training_loader,
)

logger = logging.getLogger(__name__)

__all__ = ["TrainSummary", "TrainingError", "build_model", "param_groups", "train_understanding"]


@dataclass
class TrainSummary:
    """What a stage-1 run reports.

    Attributes:
        best_val_accuracy: the selected model's validation accuracy.
        best_step: the optimiser step it was reached at.
        steps: optimiser steps run in total.
        seconds: wall time of this invocation's training loop.
        seconds_per_step: mean wall time per step of this invocation (data loading and evaluation included).
        skipped_images: unreadable images skipped in training.
        output_dir: the run directory.
        main_process: whether this process is the one that wrote the files (and should report).
    """

    best_val_accuracy: float
    best_step: int
    steps: int
    seconds: float
    seconds_per_step: float
    skipped_images: int
    output_dir: str
    main_process: bool = True


def param_groups(model: ExpertQueryCLIP, cfg: Any) -> list[dict[str, Any]]:
    """Backbone at lr × backbone_lr_scale, new modules at lr; no weight decay on ``model.no_weight_decay()``."""
    backbone = {id(p) for p in model.backbone_parameters()}
    undecayed = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in backbone, name in undecayed), []).append(param)
    o = cfg.optim
    return [
        {
            "params": params,
            "lr": o.lr * (o.backbone_lr_scale if is_backbone else 1.0),
            "weight_decay": 0.0 if no_decay else o.weight_decay,
        }
        for (is_backbone, no_decay), params in sorted(groups.items())
    ]


def build_model(cfg: UnderstandingRunConfig, num_classes: int, attribute_dim: int, vocab_sizes: tuple[int, int]):
    """The :class:`ExpertQueryCLIP` a run config describes, by :func:`~uniemo.models.factory.create_model`: the
    ``model`` section's preset, backbone and architecture fields, the label set and the vocabularies' sizes."""
    arch = {
        f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(ExpertQueryConfig) if hasattr(cfg.model, f.name)
    }
    return create_model(
        cfg.model.preset,
        backbone=cfg.model.backbone,
        num_classes=num_classes,
        attribute_dim=attribute_dim,
        seed=cfg.seed,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        num_scene_names=vocab_sizes[0],
        num_object_names=vocab_sizes[1],
        **arch,
    )


def attribute_embeddings(
    cfg: UnderstandingRunConfig, scene_vocab: list[str], object_vocab: list[str]
) -> tuple[int, dict[str, torch.Tensor]]:
    """(d_t, ``scene`` / ``object`` → (V, d_t) text embeddings of the names) from the frozen CLIP text tower; with
    ``query_mode: none`` (no L_S / L_O) d_t is 1 and both are empty."""
    vocab_embeds = {"scene": torch.zeros(0, 1), "object": torch.zeros(0, 1)}
    if cfg.model.query_mode == "none":
        return 1, vocab_embeds
    text_model, tokenizer = load_clip_text(cfg.model.text_model or cfg.model.backbone, seed=cfg.seed)
    text_model.requires_grad_(False).eval()
    template = cfg.model.attribute_template
    for which, names in (("scene", scene_vocab), ("object", object_vocab)):
        vocab_embeds[which] = encode_texts(text_model, tokenizer, [template.format(n) for n in names])
    return int(text_model.config.projection_dim), vocab_embeds


def train_understanding(cfg: UnderstandingRunConfig, resume: bool = False, progress: bool = True) -> TrainSummary:
    """Runs stage 1 as configured and returns its :class:`TrainSummary`.

    Raises:
        ConfigError / DataError / CheckpointError: bad configuration, data or backbone.
        TrainingError: a non-finite loss (the last good checkpoint stays in ``output_dir/last``).
    """
    require({"output_dir": (cfg.output_dir, "runs/my-run"), "data.root": (cfg.data.root, "/data/EmoSet-118K")})
    run = open_run(cfg, resume, kept=("last", "best"))

    # ---- data and attribute text embeddings -------------------------------------------------------------------
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.fold)
    train_samples = dataset.split(cfg.data.train_split)[: cfg.data.max_train_samples]
    for note in dataset.notes:
        logger.info("data: %s", note)
    use_queries = cfg.model.query_mode != "none"
    scene_vocab, object_vocab = dataset.vocabularies(cfg.data.train_split) if use_queries else ([], [])
    if use_queries and not (scene_vocab or object_vocab):
        logger.warning("the dataset has no scene/object annotations: L_S and L_O are off, only L_CE trains")
    attribute_dim, vocab_embeds = attribute_embeddings(cfg, scene_vocab, object_vocab)

    # ---- model and its data views -------------------------------------------------------------------------------
    model = build_model(cfg, len(dataset.classes), attribute_dim, (len(scene_vocab), len(object_vocab)))
    model.scene_vocab_embeds.copy_(vocab_embeds["scene"].reshape(len(scene_vocab), attribute_dim))
    model.object_vocab_embeds.copy_(vocab_embeds["object"].reshape(len(object_vocab), attribute_dim))
    if cfg.model.freeze_backbone:
        model.vision.requires_grad_(False)
    bad = cfg.data.on_bad_image
    transform = ClipTransform(model.image_size, augment=cfg.data.augment)
    train_set = EmotionImageDataset(train_samples, transform, scene_vocab, object_vocab, cfg.seed, bad)
    val_set = EmotionImageDataset(dataset.split(cfg.data.val_split), ClipTransform(model.image_size), on_bad_image=bad)

    # ---- optimiser and the engine -------------------------------------------------------------------------------
    loader, sampler, _, steps_per_epoch = training_loader(train_set, cfg, run.accelerator.num_processes)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or eval_every
    optimizer, scheduler = adamw_cosine(param_groups(model, cfg), cfg.optim, total_steps)
    if cfg.compile:
        model.compile()  # in place: the state dict keeps its names
    classes = list(dataset.classes)
    meta = model.checkpoint_meta(
        classes, scene_vocab=scene_vocab, object_vocab=object_vocab, extra=stage1_extra(cfg, dataset, train_samples)
    )
    best = {"best_val_accuracy": -1.0, "best_step": 0}
    trainer = Trainer(run, "stage 1", model, optimizer, scheduler, loader, sampler, total_steps, record=best)
    best = trainer.record  # restored on resume
    if run.is_main:
        logger.info(
            "stage 1: %d train / %d val images, %d classes, %s (%s), %d steps of batch %d (%d per epoch)",
            *(len(train_set), len(val_set), len(classes), cfg.model.backbone, cfg.model.query_mode),
            *(total_steps, cfg.optim.batch_size, steps_per_epoch),
        )

    # ---- the loop: L_U on each batch; validation (model selection) every eval_every steps and at the last -------
    vocab = {"scene": trainer.unwrapped.scene_vocab_embeds, "object": trainer.unwrapped.object_vocab_embeds}
    try:
        for batch in trainer.batches(progress, postfix={"loss": "loss/total", "acc": "train/accuracy"}):
            with run.accelerator.accumulate(trainer.model):
                out = trainer.model(batch["pixel_values"])
                loss, parts = understanding_loss(out, batch, vocab, cfg.loss, cfg.model.temperature)
                parts["train/accuracy"] = (out.logits.argmax(-1) == batch["label"]).float().mean()
                if not trainer.update(loss, parts):
                    continue
            if trainer.due(eval_every) or trainer.done:
                accuracy = trainer.share(validation_accuracy(trainer, val_set, classes) if run.is_main else None)
                trainer.log({"val/accuracy": accuracy})
                if accuracy > best["best_val_accuracy"]:
                    best.update(best_val_accuracy=accuracy, best_step=trainer.step)
                    trainer.save("best", {**meta, "val_accuracy": accuracy, "step": trainer.step})
                trainer.say(f"step {trainer.step}: val accuracy {accuracy:.2%} (best {best['best_val_accuracy']:.2%})")
            if trainer.due(save_every) and not trainer.done:
                trainer.save("last", meta)
    except KeyboardInterrupt:
        raise trainer.interrupted(meta) from None
    trainer.save("last", meta)
    summary = TrainSummary(
        best_val_accuracy=best["best_val_accuracy"],
        best_step=best["best_step"],
        steps=trainer.step,
        seconds=trainer.seconds,
        seconds_per_step=trainer.seconds / max(1, trainer.steps_run),
        skipped_images=trainer.state.skipped_images,
        output_dir=str(run.out_dir),
        main_process=run.is_main,
    )
    return trainer.finish(summary)


def stage1_extra(cfg: UnderstandingRunConfig, dataset: Any, train_samples: list) -> dict[str, Any]:
    """What a stage-1 checkpoint records besides its weights: the data it saw, the backbone and text model, the
    attribute template and τ (a joint run reads the last three for its prior and L_U)."""
    return {
        "dataset": {
            "root": str(dataset.root),
            "format": dataset.format,
            "train_counts": label_counts(train_samples, dataset.classes),
        },
        "backbone": cfg.model.backbone,
        "text_model": cfg.model.text_model or cfg.model.backbone,
        "attribute_template": cfg.model.attribute_template,
        "temperature": cfg.model.temperature,
    }


def validation_accuracy(trainer: Trainer, val_set: EmotionImageDataset, classes: list[str]) -> float:
    """The model's accuracy on the validation split (the one figure stage 1 selects its model by).

    Raises:
        TrainingError: no image of the split is readable.
    """
    workers = trainer.cfg.data.num_workers
    probs, labels, _, bad = predict_dataset(
        trainer.unwrapped, val_set, batch_size=trainer.micro_batch, num_workers=workers
    )
    if len(labels) == 0:
        raise TrainingError(f"no readable image in the validation split ({len(bad)} skipped)")
    return classification_report(probs.argmax(1), labels, classes).accuracy
