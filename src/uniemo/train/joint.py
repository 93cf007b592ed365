"""Stage 2: joint training of understanding and emotion-conditioned generation (METHOD §3–§5) on the training
engine (:mod:`.loop`).

Read top to bottom: stage-1 model and frozen diffusion model → data → prior P(e|a) and accuracy before → optimiser
→ the step (:class:`JointObjective`: L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ)) and the evaluation hook (test
accuracy, the conditioning diagnostic) → emotion space → accuracy after. The engine writes ``last/`` atomically
every ``save_every`` steps (and on Ctrl-C) with the optimiser, scheduler and RNG states, so ``--resume`` continues
the same run; the finished model (with its emotion space) is ``last/`` with ``"finished": true``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uniemo.checkpoint import load_optimizer_moments, resolve_checkpoint
from uniemo.config import JointRunConfig
from uniemo.data.datasets import EmotionImageDataset, Sample, collate, open_dataset, per_class
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError, DataError
from uniemo.losses import condition_loss, diffusion_loss, understanding_loss
from uniemo.metrics.classification import classification_report
from uniemo.models.alpha import classifier_prior, cooccurrence_prior, train_prior_head
from uniemo.models.configs import UniEmoConfig
from uniemo.models.diffusion import load_stable_diffusion
from uniemo.models.emotion_space import emotion_space
from uniemo.models.factory import is_architecture_name
from uniemo.models.placeholder import PromptEncoder, sdxl_time_ids
from uniemo.models.uniemo import UniEmoModel
from uniemo.pipelines.classifier import JOINT_KIND, EmotionClassifier, predict_dataset
from uniemo.train.conditioning import conditioning_report, make_probe, token_norms
from uniemo.train.loop import Run, Trainer, TrainingError, adamw_cosine, open_run, require, training_loader
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
    """Eval-mode ``cls``/``scene``/``object`` features (N, D) and labels (N,) of a dataset (the emotion space)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=False)
    feats: dict[str, list[torch.Tensor]] = {"cls": [], "scene": [], "object": []}
    labels = []
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        out = model.understanding(batch["pixel_values"].to(device))
        for name in feats:
            value = getattr(out, name)
            if value is not None:
                feats[name].append(value.float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    result = {name: torch.cat(chunks) for name, chunks in feats.items() if chunks}
    return {"features": result, "labels": torch.cat(labels)}


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
    from uniemo.metrics.networks import ClipNetwork, cached_embeddings, default_cache_dir

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
        from uniemo.models.factory import encode_texts, load_clip_text

        text_model, tokenizer = load_clip_text(spec)
        template = stage1_template
        scene_embeds = encode_texts(text_model.eval(), tokenizer, [template.format(n) for n in scene_vocab])
        object_embeds = encode_texts(text_model, tokenizer, [template.format(n) for n in object_vocab])
    if len(scene_vocab):
        model.prior_scene.copy_(classifier_prior(head, scene_embeds.cpu()))
    if len(object_vocab):
        model.prior_object.copy_(classifier_prior(head, object_embeds.cpu()))
    return f"classifier ({spec})"


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


def _accuracy(model: UniEmoModel, dataset: EmotionImageDataset, classes: list[str], batch_size: int) -> float:
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
    own = {"steps": j.sampling_steps, "guidance": j.sampling_guidance, "scheduler": j.sampling_scheduler}
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
    from uniemo.pipelines.generation import SCHEDULERS

    j = cfg.joint
    if j.sampling_scheduler is not None and j.sampling_scheduler not in SCHEDULERS:
        raise ConfigError(
            f"joint.sampling_scheduler must be one of {', '.join(SCHEDULERS)}, got {j.sampling_scheduler!r}"
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
        extra = start.stage1_extra
        text_spec = extra.get("text_model") or extra.get("backbone") or ""
        vocabs = (start.scene_vocab, start.object_vocab)
        template = extra.get("attribute_template", "{}")
        device = run.accelerator.device
        prior = compute_prior(cfg, start.model, data.train_samples, *vocabs, text_spec, device, template)
    accuracy = _accuracy(start.model, data.test_set, start.classes, batch) if run.is_main else float("nan")
    run.accelerator.wait_for_everyone()
    if run.is_main:
        logger.info("prior: %s; test accuracy before joint training %.2f%%", prior, 100 * accuracy)
    return {"prior": prior, "accuracy_before": accuracy}


def joint_meta(cfg: JointRunConfig, start: JointStart, trainer: Trainer, data: JointData) -> dict[str, Any]:
    """The joint checkpoint's ``model.json`` (``finished`` false until the emotion space is in)."""
    j, parent, values = cfg.joint, start.joint_meta, trainer.state.values
    return {
        "kind": JOINT_KIND,
        "architecture": trainer.unwrapped.architecture(),
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
        "prior": values["prior"],
        "condition_loss": j.condition_loss,
        "sampling": _sampling_defaults(j, parent),
        "stage1": parent["stage1"] if parent else spec_for_meta(j.understanding),
        "init_from": spec_for_meta(j.init_from) if j.init_from else None,
        "extra_train": len(data.extra_samples),
        "accuracy_before": values["accuracy_before"],
        "finished": False,
        "extra": {"dataset": data.root, "temperature": model_temperature(trainer.unwrapped)},
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
    model, encoder, data = start.model, start.encoder, joint_data(cfg, start)
    noise_scheduler, weight_dtype = freeze_diffusion(start, run.accelerator.device, cfg.mixed_precision)
    if cfg.optim.backbone_lr_scale == 0:
        model.understanding.vision.requires_grad_(False)
    loader, sampler, micro_batch, steps_per_epoch = training_loader(data.train_set, cfg, run.accelerator.num_processes)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    model.to(run.accelerator.device)
    values = {} if resume else before_training(cfg, start, data, run, micro_batch)

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
    trainer = Trainer(run, "joint", model, optimizer, scheduler, loader, sampler, total_steps, cfg.save_every, values)
    trainer.meta = joint_meta(cfg, start, trainer, data)
    if run.is_main:
        logger.info(
            "stage 2: %d train images (%d generated), %s (%s), L_cond=%s, α=%s, %d steps of batch %d",
            *(len(data.train_set), len(data.extra_samples), trainer.meta["diffusion"]),
            *("SDXL" if encoder.is_xl else "SD", j.condition_loss, j.alpha, total_steps, cfg.optim.batch_size),
        )
    vae, unet = start.pipe.vae, start.pipe.unet
    vocabs = (list(start.scene_vocab), list(start.object_vocab))
    objective = JointObjective(encoder, vae, unet, noise_scheduler, j, cfg.loss, weight_dtype, *vocabs)

    # ---- the step, the loop, the emotion space ------------------------------------------------------------------
    def step(batch: dict[str, Any], state: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Diffusion noise and timesteps: one generator per (seed, step, process): a resumed run draws alike.
        process = run.accelerator.process_index
        seed = cfg.seed * 1_000_003 + state.batch_in_epoch * 7919 + state.epoch * 104_729 + process
        return objective(trainer.model, trainer.unwrapped, batch, torch.Generator().manual_seed(seed))

    evaluate = JointEvaluation(trainer, objective, data, micro_batch)
    if trainer.state.step == 0:
        evaluate.diagnose(0)
    losses = trainer.fit(step, evaluate, progress, postfix={"loss": "loss/total", "diff": "loss/diffusion"})
    accuracy_after = build_emotion_space(trainer, evaluate, data, micro_batch) if run.is_main else float("nan")
    trainer.state.values["accuracy_after"] = accuracy_after
    trainer.save_last({"finished": True, "accuracy_after": accuracy_after, "steps": trainer.state.step})
    summary = JointSummary(
        accuracy_before=trainer.state.values["accuracy_before"],
        accuracy_after=accuracy_after,
        steps=trainer.state.step,
        seconds=trainer.seconds,
        seconds_per_step=trainer.seconds / max(1, trainer.steps_run),
        losses=losses,
        output_dir=str(run.out_dir),
        main_process=run.is_main,
        skipped_images=trainer.state.skipped_images,
        conditioning=dict(evaluate.diagnosis),
    )
    return trainer.finish(summary)


class JointEvaluation:
    """After every ``eval_every``-th step (main process): test accuracy (``metrics.jsonl`` ``test_accuracy``) and
    the conditioning diagnostic (:meth:`diagnose`): L(θ) on a fixed held-out batch with each image's own c,
    shuffled c, the emotion space's mean c and the empty prompt (:func:`~uniemo.train.conditioning
    .conditioning_report`); the last one is kept in ``diagnosis``. The engine's ``after_step`` hook."""

    def __init__(self, trainer: Trainer, objective: JointObjective, data: JointData, batch: int) -> None:
        self.trainer, self.objective, self.data, self.batch = trainer, objective, data, batch
        self.diagnosis: dict[str, Any] = {}
        j, model = trainer.cfg.joint, trainer.unwrapped
        self.probe = None
        if trainer.run.is_main and j.diagnostic_images:
            vae, size = objective.vae, model.understanding.image_size
            draws, seed = j.diagnostic_draws, trainer.cfg.seed
            self.probe = make_probe(data.held_out, size, j.resolution, vae, j.diagnostic_images, draws, seed)

    def diagnose(self, step: int) -> None:
        if self.probe is None:
            return
        report = conditioning_report(self.trainer.unwrapped, self.objective, self.probe)
        self.trainer.log(report, step)
        self.diagnosis.clear()
        self.diagnosis.update(step=step, **report)

    def __call__(self, step: int) -> None:
        every = self.trainer.cfg.eval_every
        if not (every and step % every == 0 and self.trainer.run.is_main):
            return
        classes = list(self.trainer.meta["classes"])
        accuracy = _accuracy(self.trainer.unwrapped, self.data.test_set, classes, self.batch)
        self.trainer.log({"test_accuracy": accuracy}, step)
        self.trainer.say(f"step {step}: test accuracy {accuracy:.2%}")
        self.diagnose(step)


def build_emotion_space(trainer: Trainer, evaluate: JointEvaluation, data: JointData, batch: int) -> float:
    """The final diagnostic, the emotion space from ``data.space_set``'s features, and the test accuracy after.
    A run without L(θ) (``joint.diffusion_weight=0``, implicit feedback's control) trained no mapper, so it has
    nothing to generate with and builds no emotion space.

    Raises:
        DataError: the space cannot be built (an emotion without images); the weights are saved first.
    """
    model, cfg = trainer.unwrapped, trainer.cfg
    classes = list(trainer.meta["classes"])
    if evaluate.diagnosis.get("step") != trainer.state.step:
        evaluate.diagnose(trainer.state.step)
    if cfg.joint.diffusion_weight != 0:
        feats = dataset_features(model, data.space_set, batch)
        try:
            bank = model.config.space_bank
            space = emotion_space(feats["features"], feats["labels"], len(classes), bank, cfg.seed)
            model.set_emotion_space(space)
        except ValueError as err:
            trainer.save_last()
            where = trainer.run.last_dir
            raise DataError(f"cannot build the emotion space: {err} (the trained weights are in {where})") from None
    accuracy = _accuracy(model, data.test_set, classes, batch)
    before = trainer.state.values["accuracy_before"]
    logger.info("test accuracy %.2f%% before joint training, %.2f%% after", 100 * before, 100 * accuracy)
    return accuracy


def _stratified(samples: list, limit: int, num_classes: int) -> list:
    """All samples, or at most ``limit`` taken evenly from every class (the emotion space needs each emotion)."""
    if not limit or limit >= len(samples):
        return samples
    return per_class(samples, max(2, limit // num_classes))


def model_temperature(model: UniEmoModel) -> float:
    return model.config.temperature


@dataclass
class JointObjective:
    """L_Joint of one batch (METHOD §4), used by training and by ``benchmarks/joint_step.py``:
    understanding forward → L_U and L_cond; the images' VAE latents (no gradient) → c in the placeholder's place
    → L(θ) through the frozen text encoder and UNet; L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ).

    Attributes:
        encoder / vae / unet: the frozen diffusion model's parts (already in ``weight_dtype``).
        noise_scheduler: the DDPM scheduler that draws the training noise.
        joint / weights: the run's ``joint`` and ``loss`` settings.
        weight_dtype: the frozen parts' dtype (float16/bfloat16 under mixed precision).
    """

    encoder: PromptEncoder
    vae: Any
    unet: Any
    noise_scheduler: Any
    joint: Any
    weights: Any
    weight_dtype: torch.dtype = torch.float32
    scene_vocab: list[str] = field(default_factory=list)
    object_vocab: list[str] = field(default_factory=list)

    def __call__(
        self, model: Any, base: UniEmoModel, batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_Joint, its detached parts) for ``batch``; ``model`` is ``base`` or its distributed wrapper.

        ``batch`` holds ``pixel_values`` (B, 3, S, S) for CLIP, ``diffusion_pixels`` (B, 3, R, R) in [-1, 1],
        ``label`` (B,) and ``scene_id`` / ``object_id`` (B,) (-1: no annotation); ``gen`` draws the latents'
        sample, the noise and the timesteps."""
        j = self.joint
        labels = batch["label"]
        forward = model(batch["pixel_values"], labels)
        out, condition = forward.understanding, forward.condition
        vocab = {"scene": base.understanding.scene_vocab_embeds, "object": base.understanding.object_vocab_embeds}
        loss_u, parts = understanding_loss(out, batch, vocab, self.weights, model_temperature(base))
        loss_cond = self.condition_term(base, condition, labels)
        if j.diffusion_weight == 0:  # L_U (and L_cond) alone: the implicit-feedback control, without the UNet's cost
            loss_theta = loss_u.new_zeros(())
        else:
            latents = self.latents(batch["diffusion_pixels"], gen)
            contents = self.contents(batch, gen) if j.content_prompt > 0 else None
            loss_theta = self.diffusion_term(latents, self.context(condition, len(labels), contents), gen)
        loss = j.understanding_weight * loss_u + j.diffusion_weight * loss_theta
        if loss_cond is not None:
            loss = loss + j.condition_weight * loss_cond
            parts["loss/cond"] = loss_cond.detach()
        parts.update({"loss/understanding": loss_u.detach(), "loss/diffusion": loss_theta.detach()})
        return loss, parts

    def latents(self, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Scaled VAE latents (B, C, h, h) of diffusion-view pixels (B, 3, R, R) in [-1, 1], sampled from ``gen``."""
        with torch.no_grad():
            device = next(self.vae.parameters()).device
            dist = self.vae.encode(pixels.to(device, dtype=self.weight_dtype)).latent_dist
            return dist.sample(generator=gen) * float(self.vae.config.scaling_factor)

    def contents(self, batch: dict[str, Any], gen: torch.Generator) -> list[str | None]:
        """Per image, with probability ``joint.content_prompt``, the words naming its annotated scene and object
        ("a forest with a tent"; None otherwise, or when it has neither), drawn from ``gen``."""
        draws = torch.rand(len(batch["label"]), generator=gen).tolist()
        out: list[str | None] = []
        for draw, s, o in zip(draws, batch["scene_id"].tolist(), batch["object_id"].tolist()):
            scene = self.scene_vocab[s] if 0 <= s < len(self.scene_vocab) else None
            obj = self.object_vocab[o] if 0 <= o < len(self.object_vocab) else None
            out.append(content_words(scene, obj) if draw < self.joint.content_prompt else None)
        return out

    def context(
        self, condition: torch.Tensor | None, n: int, contents: list[str | None] | None = None
    ) -> dict[str, Any]:
        """The UNet's conditioning for ``n`` images: the training prompt with c (N, Σ d_c) in the placeholder's
        place — content and placeholder joined by ``joint.transfer_template`` where ``contents`` names content (as
        the pipeline's emotion transfer joins them), else the template — or, with ``condition=None``, the empty
        prompt (the diagnostic's control)."""
        j = self.joint
        if condition is None:
            text = self.encoder.encode([""] * n)
        else:
            plain = j.template.format(j.placeholder)
            joined = j.transfer_template
            prompts = [
                joined.format(content=c, placeholder=j.placeholder) if c else plain for c in contents or [None] * n
            ]
            text = self.encoder.encode(prompts, condition.to(self.weight_dtype))
        context: dict[str, Any] = {"prompt_embeds": text["prompt_embeds"], "added": None}
        if self.encoder.is_xl:
            device = text["prompt_embeds"].device
            context["added"] = {
                "text_embeds": text["pooled_prompt_embeds"],
                "time_ids": sdxl_time_ids(n, j.resolution, device, self.weight_dtype),
            }
        return context

    def diffusion_term(self, latents: torch.Tensor, context: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        """L(θ) of ``latents`` (N, C, h, h) under ``context`` (:meth:`context`), noise and timesteps from ``gen``."""
        return diffusion_loss(
            self.unet, self.noise_scheduler, latents, context["prompt_embeds"], gen, context["added"]
        )

    def condition_term(self, model: UniEmoModel, condition: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """L_cond of c (B, Σ d_c) with emotion labels (B,), or None when ``joint.condition_loss`` is ``none``."""
        j = self.joint
        logits = model.condition_logits(condition) if j.condition_loss == "ce" else None
        return condition_loss(j.condition_loss, condition, labels, j.condition_temperature, logits)


def content_words(scene: str | None, obj: str | None) -> str | None:
    """Content as a caption names it, without palette or emotion: "a forest with a tent", "a beach", "a boat"."""
    if not scene and not obj:
        return None
    head = scene or obj
    text = f"{'an' if head[0] in 'aeiou' else 'a'} {head}"
    if scene and obj:
        text += f" with {'an' if obj[0] in 'aeiou' else 'a'} {obj}"
    return text
