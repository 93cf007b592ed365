"""Stage 2: joint training of understanding and emotion-conditioned generation (METHOD §3–§5).

Read :func:`train_joint` top to bottom: stage-1 model and frozen diffusion model → data → the prior P(e|a)
(:mod:`.prior`) and the test accuracy before → optimiser → the loop (L_Joint, :mod:`.objective`, on each batch;
the test accuracy and the conditioning diagnostic every ``eval_every`` steps; ``last/`` every ``save_every`` steps
and on Ctrl-C, with the optimiser, scheduler and RNG states, so that ``--resume`` continues the same run) → the
emotion space → the accuracy after. The finished model (with its emotion space) is ``last/`` with
``"finished": true``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uniemo.checkpoint import JOINT_KIND, load_optimizer_moments, resolve_checkpoint
from uniemo.config import JointRunConfig
from uniemo.data.datasets import EmotionImageDataset, Sample, collate, open_dataset, per_class
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError, DataError
from uniemo.metrics.classification import classification_report
from uniemo.models.architecture import UniEmoConfig
from uniemo.models.diffusion import load_stable_diffusion
from uniemo.models.emotion_space import agreeing, emotion_space
from uniemo.models.placeholder import PromptEncoder
from uniemo.models.uniemo import UniEmoModel
from uniemo.pipelines.classifier import EmotionClassifier, predict_dataset
from uniemo.pipelines.generation import SCHEDULERS
from uniemo.train.conditioning import conditioning_report, make_probe, token_norms
from uniemo.train.loop import Run, Trainer, TrainingError, adamw_cosine, open_run, require, training_loader
from uniemo.train.objective import JointObjective, model_temperature
from uniemo.train.prior import compute_prior
from uniemo.train.understanding import param_groups

logger = logging.getLogger(__name__)


@dataclass
class JointSummary:
    """What a stage-2 run reports.

    Attributes:
        accuracy_before / accuracy_after: test accuracy of the understanding model before and after joint
            training (the implicit feedback, paper Fig. 8), on ``data.test_split``.
        steps: optimiser steps in total; seconds / seconds_per_step: this invocation's loop.
        losses: mean of each loss over the last ``log_every`` steps.
        output_dir: the run directory; main_process: whether this process wrote the files.
        skipped_images: unreadable training images skipped (this process's share).
        conditioning: the last conditioning diagnostic (:func:`~uniemo.train.conditioning.conditioning_report`).
    """

    accuracy_before: float
    accuracy_after: float
    steps: int
    seconds: float
    seconds_per_step: float
    losses: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    main_process: bool = True
    skipped_images: int = 0
    conditioning: dict[str, float] = field(default_factory=dict)


def spec_for_meta(spec: str) -> str:
    """A diffusion/CLIP spec as stored in a checkpoint: local directories become absolute paths."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


@torch.no_grad()
def dataset_features(model: UniEmoModel, dataset: EmotionImageDataset, batch_size: int = 64) -> dict[str, Any]:
    """Eval-mode ``cls``/``scene``/``object`` features (N, D), labels (N,) and predicted emotions (N,) of a dataset
    (the emotion space)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=False)
    feats: dict[str, list[torch.Tensor]] = {"cls": [], "scene": [], "object": []}
    labels, predictions = [], []
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        out = model.understanding(batch["pixel_values"].to(device))
        for name in feats:
            value = getattr(out, name)
            if value is not None:
                feats[name].append(value.float().cpu())
        labels.append(batch["label"])
        predictions.append(out.logits.argmax(-1).cpu())
    model.train(was_training)
    result = {name: torch.cat(chunks) for name, chunks in feats.items() if chunks}
    return {"features": result, "labels": torch.cat(labels), "predictions": torch.cat(predictions)}


def _param_groups(model: UniEmoModel, cfg: JointRunConfig) -> list[dict[str, Any]]:
    """Stage 1's groups for the understanding model (backbone at lr × scale) and the mappers at ``mapper_lr``."""
    groups = param_groups(model.understanding, cfg)
    mappers = model.generation_parameters()
    decay = [p for p in mappers if p.ndim >= 2]
    no_decay = [p for p in mappers if p.ndim < 2]
    lr, wd = cfg.joint.mapper_lr, cfg.optim.weight_decay
    return groups + [
        {"params": decay, "lr": lr, "weight_decay": wd},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def _continue_optimizer(init_from: str, optimizer: torch.optim.Optimizer) -> None:
    """The optimiser moments of the run ``init_from`` finished with (its ``last/``), or a fresh optimiser when it
    kept none (e.g. a checkpoint from the hub) or they do not fit."""
    directory = resolve_checkpoint(init_from)
    for candidate in (directory, directory.parent / "last"):
        if (candidate / "training_state.json").is_file():
            if load_optimizer_moments(candidate, optimizer):
                logger.info("continuing from the optimiser moments of %s", candidate)
                return
            logger.warning("the optimiser state of %s does not fit this run: starting a fresh optimiser", candidate)
            return
    logger.info("%s keeps no optimiser state: starting a fresh optimiser", init_from)


def test_accuracy(model: UniEmoModel, dataset: EmotionImageDataset, classes: list[str], batch_size: int) -> float:
    """The understanding model's accuracy on the test split (before, during and after joint training)."""
    probs, labels, _, _ = predict_dataset(model.understanding, dataset, batch_size=batch_size)
    if len(labels) == 0:
        raise TrainingError("no readable image in the test split")
    return classification_report(probs.argmax(1), labels, classes).accuracy


@dataclass
class JointStart:
    """What a joint run starts from: a stage-1 model (a new run) or a finished joint checkpoint (``init_from``).

    Attributes:
        model: the UniEmoModel (mappers newly initialised, or the checkpoint's).
        pipe / encoder: the frozen diffusion pipeline and its placeholder-aware PromptEncoder.
        classes / scene_vocab / object_vocab: label set and attribute vocabularies.
        stage1_extra: the stage-1 checkpoint's ``extra`` (its text model and attribute template, for the prior).
        joint_meta: the ``init_from`` checkpoint's ``model.json`` (None for a new run).
    """

    model: UniEmoModel
    pipe: Any
    encoder: PromptEncoder
    classes: list[str]
    scene_vocab: list[str]
    object_vocab: list[str]
    stage1_extra: dict[str, Any]
    joint_meta: dict[str, Any] | None = None


def build_joint_model(cfg: JointRunConfig, seed: int = 0) -> JointStart:
    """The model a joint run trains, from ``joint.understanding`` (new mappers) or ``joint.init_from``."""
    j = cfg.joint
    if j.init_from:
        model, meta = UniEmoModel.load(j.init_from)
        directory = resolve_checkpoint(j.init_from)
        if not meta.get("finished"):
            raise CheckpointError(f"{directory} is an unfinished joint run: finish it with --resume first")
        if int(meta.get("resolution", j.resolution)) != j.resolution:
            raise ConfigError(
                f"joint.resolution is {j.resolution} but {directory} was trained at {meta['resolution']}: set "
                f"joint.resolution={meta['resolution']}"
            )
        pipe = load_stable_diffusion(meta["diffusion"], seed=int(meta.get("diffusion_seed", 0)))
        encoder = PromptEncoder(pipe, meta.get("placeholder", j.placeholder))
        return JointStart(model, pipe, encoder, meta["classes"], meta["scene_vocab"], meta["object_vocab"], {}, meta)
    stage1 = EmotionClassifier.from_pretrained(j.understanding)
    pipe = load_stable_diffusion(j.diffusion, seed=seed)
    encoder = PromptEncoder(pipe, j.placeholder)
    dim = stage1.model.vision.config.hidden_size
    own_head = j.condition_loss == "ce" and sum(encoder.condition_dims) != dim
    temperature = float(stage1.meta.get("extra", {}).get("temperature", 0.07))
    norms = None
    if j.condition_norm == "token":
        norms = [float(token_norms(injector).mean()) for injector in encoder.injectors]
    arch = UniEmoConfig(
        encoder.condition_dims,
        mapper_hidden=j.mapper_hidden,
        alpha=j.alpha,
        condition_head=own_head,
        temperature=temperature,
        space_bank=j.space_bank,
        condition_norms=norms,
        condition_features=j.condition_features,
    )
    model = UniEmoModel(stage1.model, arch)
    return JointStart(
        model, pipe, encoder, stage1.classes, stage1.scene_vocab, stage1.object_vocab, stage1.meta.get("extra", {})
    )


def _sampling_defaults(j: Any, parent: dict[str, Any] | None) -> dict[str, Any]:
    """The sampling defaults a checkpoint carries: the config's where set, else those of the run it continues."""
    own = {
        "steps": j.sampling_steps,
        "guidance": j.sampling_guidance,
        "scheduler": j.sampling_scheduler,
        "diversity": j.sampling_diversity,
    }
    inherited = dict((parent or {}).get("sampling") or {})
    return {**inherited, **{k: v for k, v in own.items() if v is not None}}


def read_extra_samples(path: str | Path, classes: list[str]) -> list[Sample]:
    """The ``joint.extra_train`` list (``[{"path", "emotion"}, …]``) as samples without attributes.

    Raises:
        DataError: the file is unreadable, an entry lacks a field, or names an unknown emotion or a missing file.
    """
    file = Path(path)
    try:
        entries = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"joint.extra_train {file} is not a readable JSON list ({err})") from None
    if not isinstance(entries, list):
        raise DataError(f"joint.extra_train {file} must hold a JSON list of {{'path', 'emotion'}} entries")
    samples = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry or "emotion" not in entry:
            raise DataError(f"joint.extra_train {file}: entry {i} needs 'path' and 'emotion'")
        if entry["emotion"] not in classes:
            raise DataError(f"joint.extra_train {file}: entry {i} has unknown emotion {entry['emotion']!r}")
        image = Path(entry["path"])
        image = image if image.is_absolute() else file.parent / image
        if not image.is_file():
            raise DataError(f"joint.extra_train {file}: entry {i} names a missing file {image}")
        samples.append(Sample(image, classes.index(entry["emotion"])))
    return samples


@dataclass
class JointData:
    """The splits a joint run reads: training (with ``joint.extra_train``), test (accuracy), and the images the
    emotion space is built from (at most ``joint.space_max_images``, every emotion alike)."""

    root: str
    train_samples: list[Sample]
    extra_samples: list[Sample]
    train_set: EmotionImageDataset
    test_set: EmotionImageDataset
    space_set: EmotionImageDataset
    held_out: list[Sample]


def joint_data(cfg: JointRunConfig, start: JointStart) -> JointData:
    """The datasets of a joint run, in the stage-1 model's views (CLIP input; the diffusion view at
    ``joint.resolution``).

    Raises:
        ConfigError: the dataset's classes differ from the model's.
    """
    j, bad = cfg.joint, cfg.data.on_bad_image
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.fold)
    if list(dataset.classes) != start.classes:
        raise ConfigError(
            f"the dataset's classes ({', '.join(dataset.classes)}) differ from the stage-1 model's "
            f"({', '.join(start.classes)}): joint training continues stage 1 on the same label set"
        )
    train_samples = dataset.split(cfg.data.train_split)[: cfg.data.max_train_samples]
    extra = read_extra_samples(j.extra_train, start.classes) if j.extra_train else []
    test_samples = dataset.split(cfg.data.test_split)
    size = start.model.understanding.image_size
    augmented, plain = ClipTransform(size, augment=cfg.data.augment), ClipTransform(size)
    vocabs = (start.scene_vocab, start.object_vocab)
    train_set = EmotionImageDataset(train_samples + extra, augmented, *vocabs, cfg.seed, bad, j.resolution)
    space = _stratified(train_samples, j.space_max_images, len(start.classes))
    held_out = dataset.split(cfg.data.val_split) if cfg.data.val_split in dataset.splits else test_samples
    return JointData(
        str(dataset.root),
        train_samples,
        extra,
        train_set,
        EmotionImageDataset(test_samples, plain, on_bad_image=bad),
        EmotionImageDataset(space, plain, on_bad_image=bad),
        held_out,
    )


def check_joint_config(cfg: JointRunConfig) -> None:
    """Refuses joint settings no run can use (the trainer's own checks, before anything is loaded)."""

    j = cfg.joint
    if j.sampling_scheduler is not None and j.sampling_scheduler not in SCHEDULERS:
        raise ConfigError(
            f"joint.sampling_scheduler must be one of {', '.join(SCHEDULERS)}, got {j.sampling_scheduler!r}"
        )
    if j.sampling_diversity is not None and j.sampling_diversity < 0:
        raise ConfigError(
            f"joint.sampling_diversity must be ≥ 0 (0: the emotion space's mean), got {j.sampling_diversity}"
        )
    if not 0 <= j.content_prompt <= 1:
        raise ConfigError(f"joint.content_prompt is a share of the training prompts (0 to 1), got {j.content_prompt}")
    if j.template.count("{}") != 1:
        raise ConfigError(f"joint.template must hold '{{}}' (where the placeholder goes) once, got {j.template!r}")
    if any(j.transfer_template.count(f"{{{k}}}") != 1 for k in ("content", "placeholder")):
        raise ConfigError(
            f"joint.transfer_template must hold {{content}} and {{placeholder}} once each, got {j.transfer_template!r}"
        )


def freeze_diffusion(start: JointStart, device: Any, mixed_precision: str) -> tuple[Any, torch.dtype]:
    """Freezes the VAE, UNet and text encoder(s) on ``device`` in the mixed-precision dtype; returns the DDPM
    scheduler that draws the training noise (whatever sampler the pipeline ships: SDXL's Euler scales noise by σ)
    and that dtype."""
    from diffusers import DDPMScheduler

    pipe = start.pipe
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    for part in (pipe.vae, pipe.unet, *(inj.text_encoder for inj in start.encoder.injectors)):
        part.requires_grad_(False).eval().to(device)
        if weight_dtype != torch.float32:
            part.to(dtype=weight_dtype)
    return DDPMScheduler.from_config(pipe.scheduler.config), weight_dtype


def before_training(cfg: JointRunConfig, start: JointStart, data: JointData, run: Run, batch: int) -> dict[str, Any]:
    """Fills the prior P(e | a) (a new model; a continued one brings its own) and measures the test accuracy
    before joint training (main process); both are kept with the run."""
    if start.joint_meta is not None:
        prior = start.joint_meta.get("prior", "")
    else:
        prior = fill_prior(cfg, start, data, run.accelerator.device)
    record: dict[str, Any] = {"prior": prior}
    if cfg.joint.alpha == "mean" and start.joint_meta is None:
        record["alpha_mean"] = fill_alpha_mean(start.model, data.train_set, batch)
        logger.info("α: the training set's mean soft α_S %.3f, α_O %.3f for every image", *record["alpha_mean"])
    accuracy = test_accuracy(start.model, data.test_set, start.classes, batch) if run.is_main else float("nan")
    run.accelerator.wait_for_everyone()
    if run.is_main:
        logger.info("prior: %s; test accuracy before joint training %.2f%%", prior, 100 * accuracy)
    return {**record, "accuracy_before": accuracy}


def fill_prior(cfg: JointRunConfig, start: JointStart, data: JointData, device: Any = "cpu") -> str:
    """Fills a new model's prior P(e | a) in the stage-1 model's text space (:func:`compute_prior`); returns what
    was used."""
    extra = start.stage1_extra
    text_spec = extra.get("text_model") or extra.get("backbone") or ""
    vocabs, template = (start.scene_vocab, start.object_vocab), extra.get("attribute_template", "{}")
    return compute_prior(cfg, start.model, data.train_samples, *vocabs, text_spec, device, template)


@torch.no_grad()
def fill_alpha_mean(model: UniEmoModel, dataset: EmotionImageDataset, batch_size: int) -> list[float]:
    """Sets ``model.alpha_mean`` to soft α_S, α_O averaged over ``dataset`` (each image with its own emotion, the
    model in eval mode, the prior already filled) and returns the two values."""
    was_training = model.training
    model.eval()
    device = model.alpha_mean.device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=False)
    sums, n = torch.zeros(2, dtype=torch.float64), 0
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        out = model.understanding(batch["pixel_values"].to(device))
        alphas = model.alphas(out.scene_embeds, out.object_embeds, batch["label"].to(device), mode="soft")
        sums += torch.stack([a.double().sum().cpu() for a in alphas])
        n += len(batch["label"])
    model.train(was_training)
    model.alpha_mean.copy_((sums / max(1, n)).float())
    return [float(v) for v in model.alpha_mean]


def joint_meta(cfg: JointRunConfig, start: JointStart, data: JointData, record: dict[str, Any]) -> dict[str, Any]:
    """The joint checkpoint's ``model.json`` (``finished`` false until the emotion space is in); ``record`` holds
    the prior and the accuracy before training."""
    j, parent = cfg.joint, start.joint_meta
    return {
        "kind": JOINT_KIND,
        "architecture": start.model.architecture(),
        "classes": start.classes,
        "scene_vocab": start.scene_vocab,
        "object_vocab": start.object_vocab,
        "diffusion": parent["diffusion"] if parent else spec_for_meta(j.diffusion),
        # rebuilds the random tiny-sd / tiny-sdxl test models alike
        "diffusion_seed": parent.get("diffusion_seed", 0) if parent else cfg.seed,
        "resolution": j.resolution,
        "placeholder": j.placeholder,
        "template": j.template,
        "transfer_template": j.transfer_template,
        "prior": record["prior"],
        "condition_loss": j.condition_loss,
        "sampling": _sampling_defaults(j, parent),
        "stage1": parent["stage1"] if parent else spec_for_meta(j.understanding),
        "init_from": spec_for_meta(j.init_from) if j.init_from else None,
        "extra_train": len(data.extra_samples),
        "accuracy_before": record["accuracy_before"],
        "finished": False,
        "extra": {"dataset": data.root, "temperature": model_temperature(start.model)},
    }


def train_joint(cfg: JointRunConfig, resume: bool = False, progress: bool = True) -> JointSummary:
    """Runs stage 2 as configured and returns its :class:`JointSummary`.

    Raises:
        ConfigError / DataError / CheckpointError: bad configuration, data, stage-1 checkpoint or diffusion model.
        TrainingError: a non-finite loss or an interruption (the state is saved in ``output_dir/last``).
    """
    from accelerate.utils import DistributedDataParallelKwargs

    j = cfg.joint
    required = {
        "output_dir": (cfg.output_dir, "runs/joint"),
        "data.root": (cfg.data.root, "/data/EmoSet-118K"),
        "joint.understanding": (j.understanding or j.init_from, "runs/stage1"),
    }
    require(required)
    check_joint_config(cfg)
    # M_S and M_O receive no gradient without queries (or with c from the class token alone), no mapper at w_θ = 0
    run = open_run(cfg, resume, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])

    # ---- models and data --------------------------------------------------------------------------------------
    start = build_joint_model(cfg, cfg.seed)
    model = start.model
    encoder = start.encoder
    data = joint_data(cfg, start)
    noise_scheduler, weight_dtype = freeze_diffusion(start, run.accelerator.device, cfg.mixed_precision)
    if cfg.optim.backbone_lr_scale == 0:
        model.understanding.vision.requires_grad_(False)
    loader, sampler, micro_batch, steps_per_epoch = training_loader(data.train_set, cfg, run.accelerator.num_processes)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    model.to(run.accelerator.device)
    record = {} if resume else before_training(cfg, start, data, run, micro_batch)

    # ---- optimiser and the engine -------------------------------------------------------------------------------
    optimizer, scheduler = adamw_cosine(_param_groups(model, cfg), cfg.optim, total_steps)
    if j.init_from and j.init_optimizer and not resume:
        _continue_optimizer(j.init_from, optimizer)
    if j.gradient_checkpointing:
        start.pipe.unet.enable_gradient_checkpointing()
        model.understanding.gradient_checkpointing = True
    if cfg.compile:
        model.understanding.compile()  # in place: the state dict keeps its names
        start.pipe.unet.compile()
    trainer = Trainer(run, "joint", model, optimizer, scheduler, loader, sampler, total_steps, record=record)
    record = trainer.record  # restored on resume
    meta = joint_meta(cfg, start, data, record)
    if run.is_main:
        logger.info(
            "stage 2: %d train images (%d generated), %s (%s), L_cond=%s, α=%s, %d steps of batch %d",
            *(len(data.train_set), len(data.extra_samples), meta["diffusion"]),
            *("SDXL" if encoder.is_xl else "SD", j.condition_loss, j.alpha, total_steps, cfg.optim.batch_size),
        )
    vocabs = (list(start.scene_vocab), list(start.object_vocab))
    objective = JointObjective(
        encoder, start.pipe.vae, start.pipe.unet, noise_scheduler, j, cfg.loss, weight_dtype, *vocabs
    )
    probe = diagnostic_probe(cfg, data, objective, model) if run.is_main else None
    diagnosis = diagnose(trainer, objective, probe) if trainer.step == 0 else {}

    # ---- the loop: L_Joint on each batch; test accuracy and the diagnostic every eval_every steps --------------
    classes, process = list(start.classes), run.accelerator.process_index
    try:
        for batch in trainer.batches(progress, postfix={"loss": "loss/total", "diff": "loss/diffusion"}):
            # Diffusion noise and timesteps: one generator per (seed, position, process): a resumed run draws alike.
            state = trainer.state
            seed = cfg.seed * 1_000_003 + state.batch_in_epoch * 7919 + state.epoch * 104_729 + process
            with run.accelerator.accumulate(trainer.model):
                loss, parts = objective(trainer.model, model, batch, torch.Generator().manual_seed(seed))
                if not trainer.update(loss, parts):
                    continue
            if trainer.due(cfg.eval_every) and run.is_main:
                accuracy = test_accuracy(model, data.test_set, classes, micro_batch)
                trainer.log({"test/accuracy": accuracy})
                trainer.say(f"step {trainer.step}: test accuracy {accuracy:.2%}")
                diagnosis = diagnose(trainer, objective, probe) or diagnosis
            if trainer.due(cfg.save_every) and not trainer.done:
                trainer.save("last", meta)
    except KeyboardInterrupt:
        raise trainer.interrupted(meta) from None

    # ---- the emotion space and the accuracy after --------------------------------------------------------------
    if run.is_main and diagnosis.get("step") != trainer.step:
        diagnosis = diagnose(trainer, objective, probe) or diagnosis
    if run.is_main and j.diffusion_weight != 0:  # at w_θ = 0 (implicit feedback's control) no mapper was trained
        try:
            used = build_emotion_space(model, data.space_set, cfg.seed, micro_batch, j.space_filter)
            trainer.say(f"emotion space built from {used:.1%} of {len(data.space_set)} training images")
        except ValueError as err:
            trainer.save("last", meta)
            where = run.last_dir
            raise DataError(f"cannot build the emotion space: {err} (the trained weights are in {where})") from None
    accuracy_after = test_accuracy(model, data.test_set, classes, micro_batch) if run.is_main else float("nan")
    if run.is_main:
        before = record["accuracy_before"]
        logger.info("test accuracy %.2f%% before joint training, %.2f%% after", 100 * before, 100 * accuracy_after)
    record["accuracy_after"] = accuracy_after
    trainer.save("last", {**meta, "finished": True, "accuracy_after": accuracy_after, "steps": trainer.step})
    summary = JointSummary(
        accuracy_before=record["accuracy_before"],
        accuracy_after=accuracy_after,
        steps=trainer.step,
        seconds=trainer.seconds,
        seconds_per_step=trainer.seconds / max(1, trainer.steps_run),
        losses=trainer.last_logs,
        output_dir=str(run.out_dir),
        main_process=run.is_main,
        skipped_images=trainer.state.skipped_images,
        conditioning=diagnosis,
    )
    return trainer.finish(summary)


def diagnostic_probe(cfg: JointRunConfig, data: JointData, objective: JointObjective, model: UniEmoModel) -> Any:
    """The conditioning diagnostic's fixed held-out batch (None with ``joint.diagnostic_images: 0``)."""
    j = cfg.joint
    if not j.diagnostic_images:
        return None
    size, vae = model.understanding.image_size, objective.vae
    return make_probe(data.held_out, size, j.resolution, vae, j.diagnostic_images, j.diagnostic_draws, cfg.seed)


def diagnose(trainer: Trainer, objective: JointObjective, probe: Any) -> dict[str, Any]:
    """The conditioning diagnostic at the current step, logged (:func:`~uniemo.train.conditioning
    .conditioning_report`: L(θ) on the probe with each image's own c, shuffled c, the space's mean c and the empty
    prompt); {} without a probe."""
    if probe is None:
        return {}
    report = conditioning_report(trainer.unwrapped, objective, probe)
    trainer.log(report)
    return {"step": trainer.step, **report}


def build_emotion_space(
    model: UniEmoModel, space_set: EmotionImageDataset, seed: int, batch: int, space_filter: str = "none"
) -> float:
    """Sets the model's emotion space from ``space_set``'s features: all of them, or with ``space_filter=
    "agreeing"`` only those of the images the model reads as their labelled emotion (:func:`~uniemo.models
    .emotion_space.agreeing`). Returns the share of the images used.

    Raises:
        ValueError: the space cannot be built (an emotion without images).
    """
    feats = dataset_features(model, space_set, batch)
    classes = model.understanding.num_classes
    features, labels = feats["features"], feats["labels"]
    if space_filter == "agreeing":
        keep = agreeing(labels, feats["predictions"], classes)
        features, labels = {name: x[keep] for name, x in features.items()}, labels[keep]
    model.set_emotion_space(emotion_space(features, labels, classes, model.config.space_bank, seed))
    return len(labels) / max(1, len(feats["labels"]))


def _stratified(samples: list, limit: int, num_classes: int) -> list:
    """All samples, or at most ``limit`` taken evenly from every class (the emotion space needs each emotion)."""
    if not limit or limit >= len(samples):
        return samples
    return per_class(samples, max(2, limit // num_classes))
