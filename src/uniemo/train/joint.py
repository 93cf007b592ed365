"""Stage 2: joint training of understanding and emotion-conditioned generation (METHOD §3–§5), with accelerate.

Read top to bottom: set up → stage-1 model and data → frozen diffusion model → prior P(e|a) → accuracy before →
optimiser → (resume) → loop (L_Joint = 0.3·L_U + 0.3·L_cond + 0.4·L(θ)) → emotion space → accuracy after.
``last/`` is written atomically every ``save_every`` steps (and on Ctrl-C) with the optimiser, scheduler and RNG
states, so ``--resume`` continues the same run; the finished model (with its emotion space) is ``last/`` with
``"finished": true``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from uniemo.checkpoint import (
    CONFIG_FILE,
    atomic_directory,
    load_training_state,
    load_weights,
    read_meta,
    recover_directory,
    resolve_checkpoint,
    save_model,
    save_training_state,
    write_atomic,
)
from uniemo.config import JointRunConfig, config_to_dict
from uniemo.data.datasets import EmotionImageDataset, Sample, collate, open_dataset, per_class
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError, DataError
from uniemo.losses import supervised_contrastive
from uniemo.metrics.classification import classification_report
from uniemo.models.diffusion import diffusion_loss, load_stable_diffusion
from uniemo.models.factory import is_architecture_name
from uniemo.models.fusion import classifier_prior, cooccurrence_prior, emotion_space, train_prior_head
from uniemo.models.uniemo import PromptEncoder, UniEmoModel, sdxl_time_ids
from uniemo.pipelines.classifier import JOINT_KIND, EmotionClassifier, predict_dataset
from uniemo.train.conditioning import conditioning_report, make_probe, token_norms
from uniemo.train.understanding import (
    TrainingError,
    append_jsonl,
    check_resumable,
    config_yaml_text,
    cosine_with_warmup,
    end_training,
    flat_dict,
    param_groups,
    training_loader,
    understanding_loss,
)

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
        directory = resolve_checkpoint(j.init_from)
        meta = read_meta(directory, JOINT_KIND)
        if not meta.get("finished"):
            raise CheckpointError(f"{directory} is an unfinished joint run: finish it with --resume first")
        if int(meta.get("resolution", j.resolution)) != j.resolution:
            raise ConfigError(
                f"joint.resolution is {j.resolution} but {directory} was trained at {meta['resolution']}: set "
                f"joint.resolution={meta['resolution']}"
            )
        model = UniEmoModel.from_architecture(meta["architecture"])
        load_weights(directory, model)
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
    model = UniEmoModel(
        stage1.model, encoder.condition_dims, j.mapper_hidden, j.alpha, own_head, temperature, j.space_bank, norms
    )
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


def train_joint(cfg: JointRunConfig, resume: bool = False, progress: bool = True) -> JointSummary:
    """Runs stage 2 as configured and returns its :class:`JointSummary`.

    Raises:
        ConfigError / DataError / CheckpointError: bad configuration, data, stage-1 checkpoint or diffusion model.
        TrainingError: a non-finite loss or an interruption (the state is saved in ``output_dir/last``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    j = cfg.joint
    for key, value, example in (
        ("output_dir", cfg.output_dir, "runs/joint"),
        ("data.root", cfg.data.root, "/data/EmoSet-118K"),
        ("joint.understanding", j.understanding or j.init_from, "runs/stage1"),
    ):
        if not value:
            raise ConfigError(f"{key} is required (e.g. {key}={example})")
    from uniemo.pipelines.generation import SCHEDULERS

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
    out_dir = Path(cfg.output_dir)
    last_dir = recover_directory(out_dir / "last")
    if resume and not (last_dir / "training_state.json").is_file():
        raise ConfigError(f"nothing to resume: {last_dir} has no training state (start without --resume)")
    if not resume and last_dir.exists():
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another output_dir")
    if resume:
        check_resumable(last_dir / CONFIG_FILE, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        log_with="tensorboard",
        project_dir=str(out_dir / "logs"),
        # without queries (query_mode none) M_S and M_O receive no gradient
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process
    device = accelerator.device

    # ---- stage-1 model, diffusion model, data -----------------------------------------------------------------
    start = build_joint_model(cfg, cfg.seed)
    model, pipe, encoder, classes = start.model, start.pipe, start.encoder, start.classes
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.fold)
    if list(dataset.classes) != classes:
        raise ConfigError(
            f"the dataset's classes ({', '.join(dataset.classes)}) differ from the stage-1 model's "
            f"({', '.join(classes)}): joint training continues stage 1 on the same label set"
        )
    train_samples = dataset.split(cfg.data.train_split)[: cfg.data.max_train_samples]
    extra_samples = read_extra_samples(j.extra_train, classes) if j.extra_train else []
    test_samples = dataset.split(cfg.data.test_split)
    scene_vocab, object_vocab = start.scene_vocab, start.object_vocab
    u = model.understanding
    transform = ClipTransform(u.image_size, augment=cfg.data.augment)
    train_set = EmotionImageDataset(
        train_samples + extra_samples,
        transform,
        scene_vocab,
        object_vocab,
        cfg.seed,
        cfg.data.on_bad_image,
        j.resolution,
    )
    eval_transform = ClipTransform(u.image_size)
    test_set = EmotionImageDataset(test_samples, eval_transform, on_bad_image=cfg.data.on_bad_image)
    space_samples = _stratified(train_samples, j.space_max_images, len(classes))
    space_set = EmotionImageDataset(space_samples, eval_transform, on_bad_image=cfg.data.on_bad_image)

    vae, unet = pipe.vae, pipe.unet
    # Training noise follows DDPM whatever sampler the pipeline ships (SDXL's Euler scheduler scales noise by σ).
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    for part in (vae, unet, *(inj.text_encoder for inj in encoder.injectors)):
        part.requires_grad_(False).eval().to(device)
        if weight_dtype != torch.float32:
            part.to(dtype=weight_dtype)

    stage1_extra = start.stage1_extra
    text_spec = stage1_extra.get("text_model") or stage1_extra.get("backbone") or ""
    if cfg.optim.backbone_lr_scale == 0:
        u.vision.requires_grad_(False)

    loader, sampler, micro_batch, steps_per_epoch = training_loader(train_set, cfg, accelerator.num_processes)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    save_every = cfg.save_every or total_steps

    counters: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped_images": 0}
    model.to(device)
    if not resume:
        if start.joint_meta is not None:  # continuing a joint model: its priors come with its weights
            prior_used = start.joint_meta.get("prior", "")
        else:
            template = stage1_extra.get("attribute_template", "{}")
            prior_used = compute_prior(
                cfg, model, train_samples, scene_vocab, object_vocab, text_spec, device, template
            )
        counters["prior"] = prior_used
        counters["accuracy_before"] = _accuracy(model, test_set, classes, micro_batch) if is_main else float("nan")
        accelerator.wait_for_everyone()
        if is_main:
            logger.info(
                "prior: %s; test accuracy before joint training %.2f%%", prior_used, 100 * counters["accuracy_before"]
            )

    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
    warmup = int(cfg.optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))
    if resume:
        load_weights(last_dir, model)
        counters = load_training_state(last_dir, optimizer, scheduler)
        logger.info("resuming at step %d (epoch %d)", counters["step"], counters["epoch"])
    if j.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        u.gradient_checkpointing = True
    if cfg.compile:
        model.understanding.compile()  # in place: the state dict keeps its names
        unet.compile()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if resume and accelerator.scaler is not None and "grad_scaler" in counters:
        accelerator.scaler.load_state_dict(counters["grad_scaler"])

    meta = {
        "kind": JOINT_KIND,
        "architecture": accelerator.unwrap_model(model).architecture(),
        "classes": classes,
        "scene_vocab": scene_vocab,
        "object_vocab": object_vocab,
        "diffusion": start.joint_meta["diffusion"] if start.joint_meta else spec_for_meta(j.diffusion),
        # rebuilds the random tiny-sd / tiny-sdxl test models alike
        "diffusion_seed": start.joint_meta.get("diffusion_seed", 0) if start.joint_meta else cfg.seed,
        "resolution": j.resolution,
        "placeholder": j.placeholder,
        "template": j.template,
        "transfer_template": j.transfer_template,
        "prior": counters["prior"],
        "condition_loss": j.condition_loss,
        "sampling": _sampling_defaults(j, start.joint_meta),
        "stage1": start.joint_meta["stage1"] if start.joint_meta else spec_for_meta(j.understanding),
        "init_from": spec_for_meta(j.init_from) if j.init_from else None,
        "extra_train": len(extra_samples),
        "accuracy_before": counters["accuracy_before"],
        "finished": False,
        "extra": {"dataset": str(dataset.root), "temperature": model_temperature(accelerator.unwrap_model(model))},
    }
    config_yaml = config_yaml_text(cfg)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("joint", config=flat_dict(config_to_dict(cfg)))
        logger.info(
            "stage 2: %d train images (%d generated), %s (%s), L_cond=%s, α=%s, %d steps of batch %d",
            len(train_set),
            len(extra_samples),
            meta["diffusion"],
            "SDXL" if encoder.is_xl else "SD",
            j.condition_loss,
            j.alpha,
            total_steps,
            cfg.optim.batch_size,
        )

    def save_last(extra: dict[str, Any] | None = None) -> None:
        if is_main:
            if accelerator.scaler is not None:  # fp16: the loss scale continues on resume
                counters["grad_scaler"] = accelerator.scaler.state_dict()
            with atomic_directory(last_dir) as tmp:
                save_model(tmp, accelerator.unwrap_model(model), {**meta, **(extra or {})}, config_yaml)
                save_training_state(tmp, optimizer, scheduler, counters)
        accelerator.wait_for_everyone()

    objective = JointObjective(
        encoder, vae, unet, noise_scheduler, j, cfg.loss, weight_dtype, list(scene_vocab), list(object_vocab)
    )
    # ---- the conditioning diagnostic (does the UNet use c?) on a fixed held-out batch --------------------------
    probe = None
    if is_main and j.diagnostic_images:
        held_out = dataset.split(cfg.data.val_split) if cfg.data.val_split in dataset.splits else test_samples
        probe = make_probe(
            held_out, u.image_size, j.resolution, vae, j.diagnostic_images, j.diagnostic_draws, cfg.seed
        )

    diagnosis: dict[str, Any] = {}

    def diagnose(step: int) -> None:
        if probe is None:
            return
        report = conditioning_report(accelerator.unwrap_model(model), objective, probe)
        accelerator.log(report, step=step)
        append_jsonl(out_dir / "metrics.jsonl", {"step": step, **report})
        diagnosis.clear()
        diagnosis.update(step=step, **report)

    # ---- loop -------------------------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=total_steps, initial=counters["step"], desc="joint", disable=not (progress and is_main))
    start_time, start_step = time.perf_counter(), counters["step"]
    running, last_logs = {}, {}
    synced_batch = counters["batch_in_epoch"]
    try:
        if counters["step"] == 0:
            diagnose(0)
        while counters["step"] < total_steps:
            sampler.begin_epoch(
                counters["epoch"], skip=counters["batch_in_epoch"] * micro_batch * accelerator.num_processes
            )
            train_set.begin_epoch(counters["epoch"])
            for batch in loader:
                counters["batch_in_epoch"] += 1
                counters["skipped_images"] += len(batch["bad"])
                if "pixel_values" not in batch:
                    continue
                # Diffusion noise and timesteps: one generator per (seed, step, process): a resumed run draws alike.
                gen = torch.Generator().manual_seed(
                    cfg.seed * 1_000_003
                    + counters["batch_in_epoch"] * 7919
                    + counters["epoch"] * 104_729
                    + accelerator.process_index
                )
                with accelerator.accumulate(model):
                    loss, parts = objective(model, accelerator.unwrap_model(model), batch, gen)
                    if not torch.isfinite(loss):
                        kept = (
                            f"the last good checkpoint is in {last_dir}" if last_dir.exists() else "no checkpoint yet"
                        )
                        raise TrainingError(
                            f"the loss became {loss.item()} at step {counters['step']} ({kept}); lower optim.lr / "
                            "joint.mapper_lr or use mixed_precision=no"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    parts["loss/total"] = loss.detach()
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + float(value)
                running["_n"] = running.get("_n", 0.0) + 1
                if not accelerator.sync_gradients:
                    continue
                counters["step"] += 1
                synced_batch = counters["batch_in_epoch"]  # an interruption resumes after this batch
                bar.update(1)
                step = counters["step"]
                if step % cfg.log_every == 0 or step == total_steps:
                    n = running.pop("_n")
                    last_logs = {k: v / n for k, v in running.items()}
                    accelerator.log(last_logs, step=step)
                    if is_main:
                        append_jsonl(out_dir / "metrics.jsonl", {"step": step, **last_logs})
                    bar.set_postfix(loss=f"{last_logs['loss/total']:.3f}", diff=f"{last_logs['loss/diffusion']:.3f}")
                    running = {}
                if cfg.eval_every and step % cfg.eval_every == 0 and is_main:
                    acc = _accuracy(accelerator.unwrap_model(model), test_set, classes, micro_batch)
                    append_jsonl(out_dir / "metrics.jsonl", {"step": step, "test_accuracy": acc})
                    bar.write(f"step {step}: test accuracy {acc:.2%}")
                    diagnose(step)
                if step % save_every == 0 and step < total_steps:
                    save_last()
                if step >= total_steps:
                    break
            else:
                counters["epoch"] += 1
                counters["batch_in_epoch"] = synced_batch = 0
    except KeyboardInterrupt:
        bar.close()
        counters["batch_in_epoch"] = synced_batch  # micro-batches after the last optimiser step are redone
        save_last()
        raise TrainingError(
            f"interrupted at step {counters['step']}; the state is saved in {last_dir}: add --resume to continue"
        ) from None
    except BaseException:
        bar.close()  # ends the progress line, so the error message starts on its own line
        raise
    bar.close()
    elapsed = time.perf_counter() - start_time

    # ---- emotion space, accuracy after ------------------------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    accuracy_after = float("nan")
    if is_main:
        if diagnosis.get("step") != counters["step"]:
            diagnose(counters["step"])
        feats = dataset_features(unwrapped, space_set, micro_batch)
        try:
            bank = int(unwrapped.hparams.get("space_bank", 0))
            space = emotion_space(feats["features"], feats["labels"], len(classes), bank, cfg.seed)
            unwrapped.set_emotion_space(space)
        except ValueError as err:
            save_last()
            raise DataError(f"cannot build the emotion space: {err} (the trained weights are in {last_dir})") from None
        accuracy_after = _accuracy(unwrapped, test_set, classes, micro_batch)
        logger.info(
            "test accuracy %.2f%% before joint training, %.2f%% after",
            100 * counters["accuracy_before"],
            100 * accuracy_after,
        )
    counters["accuracy_after"] = accuracy_after
    if counters["skipped_images"] and is_main:
        logger.warning("skipped %d unreadable training images (data.on_bad_image=skip)", counters["skipped_images"])
    save_last({"finished": True, "accuracy_after": accuracy_after, "steps": counters["step"]})
    end_training(accelerator)
    summary = JointSummary(
        accuracy_before=counters["accuracy_before"],
        accuracy_after=accuracy_after,
        steps=counters["step"],
        seconds=elapsed,
        seconds_per_step=elapsed / max(1, counters["step"] - start_step),
        losses=last_logs,
        output_dir=str(out_dir),
        main_process=is_main,
        skipped_images=counters["skipped_images"],
        conditioning=dict(diagnosis),
    )
    if is_main:
        write_atomic(out_dir / "summary.json", json.dumps(summary.__dict__, indent=1))
    return summary


def _stratified(samples: list, limit: int, num_classes: int) -> list:
    """All samples, or at most ``limit`` taken evenly from every class (the emotion space needs each emotion)."""
    if not limit or limit >= len(samples):
        return samples
    return per_class(samples, max(2, limit // num_classes))


def model_temperature(model: UniEmoModel) -> float:
    return float(model.hparams["temperature"])


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
        out, condition = model(batch["pixel_values"], labels)
        vocab = {"scene": base.understanding.scene_vocab_embeds, "object": base.understanding.object_vocab_embeds}
        loss_u, parts = understanding_loss(out, batch, vocab, self.weights, model_temperature(base))
        loss_cond = self.condition_term(base, condition, labels)
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
        return _condition_loss(model, condition, labels, self.joint)


def content_words(scene: str | None, obj: str | None) -> str | None:
    """Content as a caption names it, without palette or emotion: "a forest with a tent", "a beach", "a boat"."""
    if not scene and not obj:
        return None
    head = scene or obj
    text = f"{'an' if head[0] in 'aeiou' else 'a'} {head}"
    if scene and obj:
        text += f" with {'an' if obj[0] in 'aeiou' else 'a'} {obj}"
    return text


def _condition_loss(model: UniEmoModel, condition: torch.Tensor, labels: torch.Tensor, j: Any) -> torch.Tensor | None:
    if j.condition_loss == "supcon":
        return supervised_contrastive(condition, labels, j.condition_temperature)
    if j.condition_loss == "ce":
        return F.cross_entropy(model.condition_logits(condition).float(), labels)
    return None
