"""Typed run configurations: one YAML per experiment, ``key=value`` overrides, unknown keys are an error.

A config is a tree of dataclasses. :func:`load_config` reads a YAML file into it, applies dotted overrides
(``optim.lr=3e-4``, ``model.query_mode=none``) and checks every value against its field's type, so a typo
or a wrong type fails at start-up with the offending key named, not hours into a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from uniemo.constants import DEFAULT_DIVERSITY, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS
from uniemo.errors import CheckpointError, ConfigError
from uniemo.models.architecture import AlphaMode, ConditionFeatures, ExpertQueryConfig, QueryMode, UniEmoConfig

_ARCH = ExpertQueryConfig()
_UNIEMO = UniEmoConfig(condition_dims=())  # the defaults of what the unified model adds
DatasetFormat = Literal["auto", "emoset", "fi", "emotionroi", "twitter", "folder"]


@dataclass
class DataConfig:
    """Where the data is and how it is read.

    Attributes:
        root: dataset directory (no default: every run names its data).
        format: layout of ``root``; ``auto`` detects EmoSet, FI, EmotionROI, Twitter and class folders.
        train_split / val_split / test_split: split names (EmoSet: ``train.json`` …; folders: sub-directories
            or split lists).
        fold: cross-validation fold for datasets without a fixed split (Twitter I/II: 5 folds).
        augment: random resized crop (scale 0.8–1) and horizontal flip in training.
        num_workers: DataLoader worker processes.
        max_train_samples: use only the first N training samples (quick runs).
        on_bad_image: ``skip`` unreadable images (counted and reported) or stop with an ``error``.
    """

    root: str = ""
    format: DatasetFormat = "auto"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    fold: int = 0
    augment: bool = True
    num_workers: int = 0
    max_train_samples: int | None = None
    on_bad_image: Literal["skip", "error"] = "skip"


@dataclass
class ModelConfig:
    """The understanding model (METHOD §2).

    Attributes:
        preset: a model preset (``uniemo.models.list_models()``): the keys of this section a config does not set
            are the preset's (its ``backbone`` and expert-query architecture); None: the defaults below.
        backbone: a CLIP checkpoint (hub id or local directory) or a named tiny architecture
            (``uniemo.models.list_architectures()``), randomly initialised.
        text_model: the frozen CLIP text tower that embeds scene/object names; ``None`` uses ``backbone``'s.
        query_mode: ``multi_stage`` (the method), ``single_step`` (both query sets enter at layer 0) or
            ``none`` (plain CLIP fine-tuning).
        num_scene_queries / num_object_queries: expert-query lengths n_s, n_o.
        scene_layer / object_layer: L₁ and L₂ (1-based layer after which each Interactive Block runs);
            ``None`` gives round(N/3) and round(2N/3).
        ib_layers: layers of each Interactive Block.
        beta_init: initial value of the modulation scalars β.
        attribute_template: prompt for scene/object names, ``{}`` is replaced by the name.
        temperature: τ of the attribute InfoNCE losses.
        freeze_backbone: train only the new modules (queries, IBs, β, projections, head).
        gradient_checkpointing: recompute vision layers in backward (less memory, about 30 % slower).
    """

    preset: str | None = None
    backbone: str = "openai/clip-vit-base-patch32"
    text_model: str | None = None
    # the architecture's fields: their defaults are ExpertQueryConfig's (the one place they are written)
    query_mode: QueryMode = _ARCH.query_mode
    num_scene_queries: int = _ARCH.num_scene_queries
    num_object_queries: int = _ARCH.num_object_queries
    scene_layer: int | None = _ARCH.scene_layer
    object_layer: int | None = _ARCH.object_layer
    ib_layers: int = _ARCH.ib_layers
    beta_init: float = _ARCH.beta_init
    attribute_template: str = "{}"
    temperature: float = 0.07
    freeze_backbone: bool = False
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    """L_U = scene·L_S + object·L_O + ce·L_CE (paper: 0.25 / 0.25 / 0.5).

    Attributes:
        scene_weight: the weight of L_S, the scene queries' contrastive loss against the scene names.
        object_weight: the weight of L_O, the object queries' contrastive loss against the object names.
        ce_weight: the weight of L_CE, the emotion classifier's cross-entropy.
        label_smoothing: label smoothing of L_CE.
    """

    scene_weight: float = 0.25
    object_weight: float = 0.25
    ce_weight: float = 0.5
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    """AdamW with cosine decay and linear warm-up (paper §IV-A).

    Attributes:
        lr: the peak learning rate of the expert queries, Interactive Blocks and head.
        backbone_lr_scale: the pretrained vision tower's lr is ``lr × backbone_lr_scale``.
        weight_decay: AdamW's decoupled weight decay (none on biases, norms and the queries).
        betas: AdamW's moment coefficients.
        batch_size: global batch size (split across processes).
        epochs: passes over the training set; ``max_steps`` overrides it when set.
        max_steps: optimiser steps in all, when set (else ``epochs`` decides).
        warmup_ratio: fraction of the steps spent in linear warm-up.
        grad_accum_steps: gradient accumulation steps per optimiser step.
        max_grad_norm: gradient clipping; 0 disables it.
    """

    lr: float = 1e-4
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 128
    epochs: int = 10
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0


@dataclass
class UnderstandingRunConfig:
    """A stage-1 run: data, model, loss, optimiser and bookkeeping.

    Attributes:
        output_dir: where ``last/``, ``best/``, ``logs/`` and ``metrics.jsonl`` go.
        seed: seeds initialisation, data order and augmentation.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (through accelerate).
        eval_every: validate (and select the best model) every this many optimiser steps; 0 = once per epoch.
        save_every: write a resumable ``last/`` checkpoint every this many steps; 0 = at each evaluation.
        log_every: log losses every this many steps.
        threads: torch intra-op threads per process; 0 leaves torch's default.
        compile: ``torch.compile`` the model (in place: checkpoints keep their names). Pays off on a GPU for long
            runs; the first steps are slow while it compiles, and it needs a C++ compiler on a CPU.
    """

    output_dir: str = ""
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: int = 0
    save_every: int = 0
    log_every: int = 10
    threads: int = 0
    compile: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class JointConfig:
    """Stage 2, joint training (METHOD §3–§5).

    Attributes:
        understanding: the stage-1 checkpoint (a run directory, or its ``best/`` / ``last/``); required.
        diffusion: the frozen Stable Diffusion (SD 1.x/2.x or SDXL): a hub id, a local directory in diffusers'
            layout, ``uniemo-standin`` (the shipped stand-in) or ``tiny-sd`` / ``tiny-sdxl`` (random, tests).
        resolution: image side the VAE encodes (512 for SD 1.5, 1024 for SDXL; the stand-in's 32).
        placeholder: the token whose input embedding becomes c.
        template: training prompt, ``{}`` is replaced by the placeholder (default: the placeholder alone).
        prior: P(e | a) from ``classifier`` (a two-layer head on frozen CLIP image features, applied to the
            attribute names' text embeddings) or ``cooccurrence`` (annotation counts).
        prior_clip: the CLIP (both towers) whose space the classifier prior uses; ``None`` = stage 1's text model.
        prior_epochs: epochs of the prior head's training.
        alpha: ``soft`` (Σ π·P), ``hard`` (P of the argmax attribute), ``none`` (α = 1, the ablation) or ``mean``
            (soft α's mean over the training set for every image: the control of α's per-emotion weighting).
        condition_loss: ``supcon`` (supervised contrastive on c: the paper's L_cond), ``ce`` (an emotion
            classifier on c, the paper's Table V baseline) or ``none`` (the default: measured, any L_cond on c pulls
            it away from what the UNet reads — docs/findings.md).
        condition_features: ``all`` (c from the class token and both expert queries, weighted by α: the method) or
            ``class_token`` (c = M_E(cls) alone: the paper's Table V "Cls" row, the queries' control in generation).
        condition_temperature: τ of the supervised contrastive loss.
        understanding_weight / condition_weight / diffusion_weight: L_Joint = w_U·L_U + w_cond·L_cond + w_θ·L(θ);
            default 0.3 / 0.3 (unused without L_cond) / 1.0; the paper's 0.3 / 0.3 / 0.4 with ``supcon`` is the
            ``tiny-joint-paper`` / ``emoset-sd15-paper`` preset.
        mapper_hidden: hidden width of M_E, M_S, M_O.
        mapper_lr: lr of the mappers (``optim.lr`` is the understanding modules' lr).
        space_max_images: training images used for the emotion space (taken evenly from every emotion); 0 = all.
        space_filter: ``none`` (the paper) builds the emotion space from all of those images; ``agreeing`` only
            from the ones the understanding model reads as their labelled emotion, so that a bank holds no image
            whose label it contradicts (an emotion none of whose images agrees keeps them all).
        init_from: a finished joint checkpoint to continue from (explicit feedback): its understanding model,
            mappers, priors and diffusion model are used, and ``understanding``, ``diffusion`` and ``prior`` are not.
        init_optimizer: continue from ``init_from``'s optimiser moments (its ``last/`` training state) instead of
            a fresh AdamW, whose first steps move every parameter by about the learning rate.
        gradient_checkpointing: recompute the UNet's and the vision tower's activations in backward (less memory
            at a larger batch or resolution, more compute; docs/speed.md has the measured cost).
        feature_cache: where the classifier prior's CLIP image features are kept between runs (keyed by the CLIP
            and the files' names, sizes and times); ``None`` = ``$UNIEMO_CACHE`` or ``~/.cache/uniemo``, ``""`` =
            no cache.
        extra_train: a JSON list of extra training images ``[{"path": …, "emotion": …}, …]`` (explicit feedback's
            selection, repeats allowed) added to the training split; they have no scene/object labels, so L_S
            and L_O are off for them.
        diagnostic_images / diagnostic_draws: the conditioning diagnostic's held-out batch (from the val split)
            and its fixed noise draws per image, run before training, every ``eval_every`` steps and at the end
            (``uniemo.train.conditioning``); 0 images turns it off.
        condition_norm: ``token`` (default) rescales c (each text encoder's part) to the mean norm of that encoder's
            token embeddings, so that it enters the text encoder where its inputs live; ``none`` leaves c as mapped
            (the paper; measured: ‖c‖ reaches 30× the token norm).
        content_prompt: the share of training prompts that name the image's annotated scene and object with the
            placeholder, joined by ``transfer_template`` as emotion transfer joins them. Default 0: the template
            alone (the paper). Measured on the stand-in whose text encoder reads objects (with the content first):
            at 0.5 c carried the palette only (shuffled − own L(θ) 0.0012, Emo-A 27 %), at 0 the scene and object
            too (0.013, 52 %); at 0.2 48 %, with transfer onto a house 96 % of the right valence instead of 89 %.
        transfer_template: how emotion transfer joins the content asked for and the placeholder (``{content}``,
            ``{placeholder}``), carried by the checkpoint. Default the placeholder first: on the demo's checkpoint,
            transfer onto "a house" kept the target's valence in 100 % [97, 100] of 128 images with a house in 65 %,
            against 87 % [80, 92] and 85 % for ``"{content}, {placeholder}"`` (checkpoints written before this
            setting existed keep that one).
        space_bank: M, real (cls, s, o) feature sets of training images kept per emotion; generation then samples
            one of them (moved towards the emotion's mean by the diversity) instead of the paper's per-emotion
            diagonal Gaussian (0).
        sampling_steps / sampling_guidance / sampling_scheduler / sampling_diversity: the sampling defaults the
            checkpoint carries (what ``UniEmoPipeline``, ``uniemo generate`` and the web app use when not told
            otherwise: the settings measured best for this model); None: 25 steps, guidance 7.5, DPM-Solver++ (or
            the sampler the diffusion model names as its own), diversity 1.
    """

    understanding: str = ""
    diffusion: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    resolution: int = 512
    placeholder: str = "<emotion>"
    template: str = "{}"
    prior: Literal["classifier", "cooccurrence"] = "classifier"
    prior_clip: str | None = None
    prior_epochs: int = 30
    alpha: AlphaMode = _UNIEMO.alpha
    condition_loss: Literal["supcon", "ce", "none"] = "none"
    condition_features: ConditionFeatures = _UNIEMO.condition_features
    condition_temperature: float = 0.07
    understanding_weight: float = 0.3
    condition_weight: float = 0.3
    diffusion_weight: float = 1.0
    mapper_hidden: int = _UNIEMO.mapper_hidden
    mapper_lr: float = 1e-3
    space_max_images: int = 0
    space_filter: Literal["none", "agreeing"] = "none"
    init_from: str | None = None
    init_optimizer: bool = True
    gradient_checkpointing: bool = False
    feature_cache: str | None = None
    extra_train: str | None = None
    diagnostic_images: int = 64
    diagnostic_draws: int = 4
    condition_norm: Literal["none", "token"] = "token"
    content_prompt: float = 0.0
    transfer_template: str = "{placeholder}, {content}"
    space_bank: int = _UNIEMO.space_bank
    sampling_steps: int | None = None
    sampling_guidance: float | None = None
    sampling_scheduler: str | None = None
    sampling_diversity: float | None = None


@dataclass
class JointRunConfig:
    """A stage-2 run. ``optim.lr`` applies to the understanding modules (queries, IBs, β, projections, head),
    ``optim.lr × optim.backbone_lr_scale`` to the vision tower (0 freezes it), ``joint.mapper_lr`` to the
    mappers; ``loss`` weighs L_U's parts as in stage 1.

    Attributes:
        output_dir / seed / mixed_precision / save_every / log_every / threads: as in stage 1.
        eval_every: report test accuracy only before and after (0), or also every this many steps.
        compile: ``torch.compile`` the understanding model and the UNet (see stage 1).
    """

    output_dir: str = ""
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: int = 0
    save_every: int = 100
    log_every: int = 10
    threads: int = 0
    compile: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, backbone_lr_scale=0.0, epochs=5))


@dataclass
class FeedbackConfig:
    """Explicit feedback, paper Alg. 1 (METHOD §6).

    Attributes:
        checkpoint: the finished joint (stage-2) run to start from; required.
        images_per_emotion: m, images generated per emotion (seeds ``seed``, ``seed + 1``, …).
        eta / delta: keep the images whose rank (descending score, per emotion) lies in [η·m, δ·m).
        rho: the kept images make up this share of the continued training set (repeated when too few).
        variants: the selections to train with, each a continued joint run of ``optim.max_steps`` steps:
            ``both`` (Emo-A and Sem-C: the method), ``emo-a`` / ``sem-c`` (single-metric, Table VI) or ``all``
            (every generated image, no filtering).
        baseline: also continue training without generated images (the comparison of Tables VI–VII).
        clip: the CLIP whose image embeddings the Emo-A classifier and Sem-C read (e.g.
            ``openai/clip-vit-large-patch14``; ``uniemo-standin`` on the built-in dataset); required.
        emo_classifier: a trained Emo-A classifier (``uniemo train emo-classifier``); ``None`` trains one on the
            training split into ``<output_dir>/emo-classifier``.
        sem_classes: Sem-C's class names: ``dataset`` (the dataset's scene and object names) or
            ``SCENES.txt,OBJECTS.txt``.
        steps / guidance / scheduler: sampling settings of every generated image; None: the checkpoint's own
            sampling defaults (``UniEmoPipeline.sampling_defaults``).
        metrics_skip: generation metrics left out of the report (e.g. ``[lpips]`` without LPIPS weights).
        fid_network: ``inception`` or ``clip`` (see ``uniemo evaluate generation``).
        pairs: image pairs per emotion for LPIPS and Sem-D.
    """

    checkpoint: str = ""
    images_per_emotion: int = 100
    eta: float = 0.2
    delta: float = 0.8
    rho: float = 0.2
    variants: list[str] = field(default_factory=lambda: ["both"])
    baseline: bool = True
    clip: str = ""
    emo_classifier: str | None = None
    sem_classes: str = "dataset"
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    metrics_skip: list[str] = field(default_factory=list)
    fid_network: Literal["inception", "clip"] = "inception"
    pairs: int = 1000


@dataclass
class FeedbackRunConfig(JointRunConfig):
    """``uniemo feedback``: a joint run's settings (used for the continued training) and ``feedback``."""

    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)


# --------------------------------------------------------------------------------------------------------------
# Configs of the commands without a run YAML (their CLI options are made from these fields)


@dataclass
class BaseConfig:
    """Recipe of the stand-in models (the defaults are the first step of the shipped stand-in's recipe)."""

    seed: int = field(default=0, metadata={"help": "seed"})
    image_size: int = 32  # diffusion resolution (latents at half of it)
    clip_steps: int = field(default=1200, metadata={"help": "contrastive CLIP steps"})
    clip_batch: int = 64
    clip_lr: float = 5e-4
    text_width: int = 32
    vae_steps: int = field(default=1000, metadata={"help": "autoencoder steps"})
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = field(default=4000, metadata={"help": "UNet steps"})
    unet_batch: int = 32
    unet_lr: float = field(default=4e-4, metadata={"help": "UNet peak learning rate"})
    caption_dropout: float = 0.1
    unet_flip: float = field(
        default=0.5,
        metadata={
            "help": "share of the UNet's training images mirrored left to right (0: none, for a dataset whose "
            "layouts are not symmetric, as the built-in mountain's)"
        },
    )
    high_noise_share: float = field(
        default=0.0,
        metadata={"help": "share of each UNet batch drawn from the noisiest 40 %% of the timesteps, 0: uniform"},
    )
    text_steps: int = field(
        default=0,
        metadata={
            "help": "SD's text encoder: a copy of the CLIP trained this many steps on hard negatives (default 0: "
            "the CLIP's text tower, or the continued stand-in's own encoder)"
        },
    )
    text_lr: float = field(default=3e-4, metadata={"help": "its peak learning rate"})
    text_cues: str = field(
        default="object",
        metadata={"help": "the cues its hard negatives vary, comma-separated (palette, scene, object)"},
    )
    clip_hard_steps: int = field(
        default=0, metadata={"help": "train the CLIP itself (both towers) this many more steps on hard negatives"}
    )
    clip_hard_lr: float = field(default=3e-4, metadata={"help": "their peak learning rate"})
    clip_cues: str = field(
        default="palette,scene,object", metadata={"help": "the cues the CLIP's hard negatives vary, in turn"}
    )
    clip_name_share: float = field(
        default=0.25, metadata={"help": "the share of their texts that is the varying cue's name alone"}
    )
    threads: int = field(default=0, metadata={"help": "torch threads (default 0: torch's)"})
    init: str | None = field(
        default=None,
        metadata={
            "help": "keep this stand-in's CLIP, VAE and SD text encoder and train its UNet --unet-steps more",
            "flag": "--continue-from",
        },
    )


@dataclass
class GenerationMetricsConfig:
    """What the suite computes and with which networks.

    Attributes:
        emo_classifier: an Emo-A classifier directory (``uniemo train emo-classifier``); needed for Emo-A.
        clip: the CLIP for Sem-C (zero-shot), Sem-D and FID on CLIP features; default: the Emo-A classifier's.
        fid_network: ``inception`` (the standard FID network, via torch-fidelity) or ``clip`` (CLIP image
            embeddings: comparable only between runs that use the same CLIP, never with published FID).
        inception_weights: torch-fidelity's Inception weight file (default: torch hub's checkpoint cache).
        lpips_alexnet / lpips_linear: LPIPS weight files (defaults: see :func:`uniemo.metrics.lpips.load_lpips`).
        sem_classes: ``dataset`` (CLIP zero-shot over the reference dataset's scene and object names) or two
            text files ``SCENES.txt,OBJECTS.txt`` with one class name a line (e.g. Places365's and ImageNet's).
        template: the zero-shot prompt.
        pairs: random pairs per emotion for LPIPS and Sem-D.
        seed: seeds the pairs.
        split: the reference split for FID.
        legacy: EmoGen's protocol (see the module docstring).
        skip: metrics not to compute (any of ``fid``, ``lpips``, ``emo-a``, ``sem-c``, ``sem-d``).
        device: where the networks run.
        batch_size: images per forward pass.
    """

    emo_classifier: str | None = field(
        default=None, metadata={"help": "Emo-A classifier (`uniemo train emo-classifier`)"}
    )
    clip: str | None = field(default=None, metadata={"help": "CLIP for Sem-C/Sem-D (default: the Emo-A classifier's)"})
    fid_network: Literal["inception", "clip"] = field(default="inception", metadata={"help": "FID's feature network"})
    inception_weights: str | None = field(default=None, metadata={"help": "torch-fidelity's Inception-V3 weight file"})
    lpips_alexnet: str | None = field(default=None, metadata={"help": "torchvision's AlexNet weight file for LPIPS"})
    lpips_linear: str | None = field(default=None, metadata={"help": "LPIPS' linear-layer file (v0.1 alex.pth)"})
    sem_classes: str = field(default="dataset", metadata={"help": "'dataset' or SCENES.txt,OBJECTS.txt (class names)"})
    template: str = "a photo of a {}."
    pairs: int = field(default=1000, metadata={"help": "image pairs per emotion for LPIPS/Sem-D"})
    seed: int = field(default=0, metadata={"help": "seed of the pairs"})
    split: str = field(default="test", metadata={"help": "FID reference split"})
    legacy: bool = field(default=False, metadata={"help": "EmoGen's protocol (whole-dataset FID reference, …)"})
    skip: tuple[str, ...] = field(
        default=(), metadata={"help": "leave out fid, lpips, emo-a, sem-c or sem-d (repeatable)"}
    )
    device: str = field(default="cpu", metadata={"help": "where the networks run"})
    batch_size: int = 64


@dataclass(frozen=True)
class EmoClassifierConfig:
    """Recipe of the Emo-A classifier, a two-layer head on CLIP image embeddings (``uniemo train emo-classifier``;
    :func:`uniemo.metrics.networks.train_emotion_classifier` takes its defaults from here).

    Attributes:
        data_format / fold: the dataset's layout (``auto``: detected) and cross-validation fold.
        epochs / hidden / lr / seed: the head's training.
        cache_dir: where the embeddings are cached (default: ``<out>-feature-cache`` beside the output).
        device: where CLIP runs.
    """

    data_format: str = field(
        default="auto", metadata={"help": "dataset layout (default: detected)", "flag": "--format"}
    )
    fold: int = field(default=0, metadata={"help": "cross-validation fold (Twitter)"})
    epochs: int = field(default=30, metadata={"help": "training epochs of the head"})
    hidden: int = field(default=512, metadata={"help": "hidden width of the two-layer head"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    seed: int = field(default=0, metadata={"help": "seed"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "feature cache directory (default: <out>-feature-cache)", "flag": "--cache"}
    )
    device: str = field(default="cpu", metadata={"help": "where CLIP runs"})


@dataclass(frozen=True)
class UnderstandingEvalConfig:
    """Which images ``uniemo evaluate understanding`` reads and how (:func:`uniemo.evaluate.evaluate_understanding`
    takes its defaults from here)."""

    split: str = field(default="test", metadata={"help": "the split to evaluate"})
    data_format: str = field(
        default="auto", metadata={"help": "dataset layout (default: detected)", "flag": "--format"}
    )
    fold: int = field(default=0, metadata={"help": "cross-validation fold (Twitter)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    num_workers: int = field(default=0, metadata={"help": "image-decoding worker processes", "flag": "--workers"})


@dataclass(frozen=True)
class ConditioningProbeConfig:
    """The probe of ``uniemo evaluate conditioning``: ``num_images`` held-out images of ``split``, taken evenly
    across emotions, each with ``draws`` fixed noise/timestep draws (:func:`uniemo.train.conditioning.
    diagnose_checkpoint` takes its defaults from here)."""

    split: str = field(default="val", metadata={"help": "held-out images to probe with"})
    num_images: int = field(
        default=128, metadata={"help": "probe images, taken evenly across emotions", "flag": "--images"}
    )
    draws: int = field(default=6, metadata={"help": "fixed noise/timestep draws per image"})
    seed: int = field(default=0, metadata={"help": "seed of the probe"})
    device: str = field(default="cpu", metadata={"help": "where the models run"})


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of :class:`uniemo.pipelines.generation.UniEmoPipeline` that ``uniemo generate`` exposes
    (the pipeline's ``__call__`` takes its defaults from here; None: the checkpoint's, else
    :data:`~uniemo.constants.DEFAULT_STEPS` / ``DEFAULT_GUIDANCE`` / ``DEFAULT_SCHEDULER``)."""

    steps: int | None = field(
        default=None, metadata={"help": f"sampling steps (default: the checkpoint's, else {DEFAULT_STEPS})"}
    )
    guidance: float | None = field(
        default=None,
        metadata={"help": f"classifier-free guidance (default: the checkpoint's, else {DEFAULT_GUIDANCE})"},
    )
    scheduler: str | None = field(
        default=None,
        metadata={
            "help": f"{DEFAULT_SCHEDULER} (default; the shipped stand-in's own DDPM for it), unipc, ddim, ddpm, "
            "pndm, euler, euler-a, or 'model' (the diffusion model's own; the paper's setting is --scheduler model "
            "--steps 50)"
        },
    )
    negative_prompt: str = field(default="", metadata={"help": "what the images should not show (default: nothing)"})
    diversity: float | None = field(
        default=None,
        metadata={
            "help": f"scale of the emotion space's spread (default: the checkpoint's, else {DEFAULT_DIVERSITY}: as "
            "trained; 0: its mean)"
        },
    )
    seed: int = field(default=0, metadata={"help": "image i uses seed + i"})


# --------------------------------------------------------------------------------------------------------------
# Loading, overrides and type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "list of " + _type_name(typing.get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against type ``tp`` (ints are accepted as floats, lists as tuples) and returns it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, typing.get_args(tp)[0], key) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        valid = ", ".join(prefix + n for n in sorted(names))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {valid}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turns ``["optim.lr=3e-4", "model.query_mode=none"]`` into a nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        # YAML reads 3e-4 as a string (no dot); numbers users type must stay numbers.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds config dataclass ``cls`` from a (nested) dict, with every key and type checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    model = values.get("model")
    if isinstance(model, dict) and model.get("preset") is not None:
        values = {**values, "model": {**preset_values(model["preset"]), **model}}
    return _build(cls, values)


def preset_values(name: Any) -> dict[str, Any]:
    """The ``model`` keys a preset sets: its backbone and expert-query architecture.

    Raises:
        ConfigError: ``name`` is not a preset.
    """
    from uniemo.models.factory import model_preset  # imports torch: only when a preset is named

    try:
        preset = model_preset(str(name))
    except CheckpointError as err:
        raise ConfigError(f"model.preset: {err}") from None
    return {"backbone": preset["backbone"], **preset["expert_queries"]}


def resolve_config_path(name: str) -> Path:
    """A config path, or the name of a built-in config (``tiny``, ``emoset-vitb32``, …)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = resources.files("uniemo.configs").joinpath(f"{path.stem}.yaml")
    if builtin.is_file():
        return Path(str(builtin))
    available = sorted(p.name[:-5] for p in resources.files("uniemo.configs").iterdir() if p.name.endswith(".yaml"))
    raise ConfigError(f"config not found: {name} (built-in configs: {', '.join(available)})")


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, cls: type = UnderstandingRunConfig
) -> Any:
    """Reads a YAML config (or starts from the defaults when ``path`` is None) and applies overrides.

    Raises:
        ConfigError: the file is missing or unparsable, a key is unknown or a value has the wrong type.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        values = loaded
    stage2 = "joint" in values
    if path is not None and "feedback" in values and cls is not FeedbackRunConfig:
        raise ConfigError(f"{path} is an explicit-feedback config: use it with `uniemo feedback`")
    if path is not None and stage2 != (cls is JointRunConfig) and cls in (JointRunConfig, UnderstandingRunConfig):
        this, other = (
            ("stage-2 (joint)", "train joint") if stage2 else ("stage-1 (understanding)", "train understanding")
        )
        raise ConfigError(f"{path} is a {this} config: use it with `uniemo {other}`")
    values = _merge(values, parse_overrides(overrides or []))
    return config_from_dict(cls, values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able values (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (the file a checkpoint carries)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
