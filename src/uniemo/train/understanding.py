"""Stage 1: train the expert-query understanding model (METHOD §2), with accelerate.

Read top to bottom: set up → data → attribute embeddings → model → optimiser → (resume) → loop → summary.
Model selection uses the validation split only. ``last/`` is written atomically every ``save_every`` steps
(and on Ctrl-C) with the optimiser, scheduler and RNG states, so ``--resume`` continues the same run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
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
    recover_directory,
    save_model,
    save_training_state,
    write_atomic,
)
from uniemo.config import UnderstandingRunConfig, config_to_dict, load_config
from uniemo.data.datasets import EmotionImageDataset, EpochSampler, collate, label_counts, open_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.errors import ConfigError, UniEmoError
from uniemo.losses import attribute_infonce
from uniemo.metrics.classification import classification_report
from uniemo.models.factory import encode_texts, load_clip_text, load_clip_vision
from uniemo.models.understanding import ExpertQueryCLIP
from uniemo.pipelines.classifier import checkpoint_meta, predict_dataset

logger = logging.getLogger(__name__)

#: Keys that may differ between a run and its resumption (they do not change the weights' trajectory).
_RESUMABLE_CHANGES = {
    "optim.epochs",
    "optim.max_steps",
    "eval_every",
    "save_every",
    "log_every",
    "data.num_workers",
    "threads",
    "output_dir",
    "compile",
    "model.gradient_checkpointing",
    "joint.gradient_checkpointing",
    "joint.feature_cache",
    "joint.diagnostic_images",
    "joint.diagnostic_draws",
    "joint.sampling_steps",
    "joint.sampling_guidance",
    "joint.sampling_scheduler",
}


class TrainingError(UniEmoError):
    """Training cannot go on (a non-finite loss, an unusable split); the last good checkpoint is kept."""


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


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def param_groups(model: ExpertQueryCLIP, cfg: Any) -> list[dict[str, Any]]:
    """Backbone at lr × backbone_lr_scale, new modules at lr; no weight decay on queries, β, norms, biases."""
    backbone = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or name.endswith("_queries") or "norm" in name or "layrnorm" in name
        groups.setdefault((id(param) in backbone, no_decay), []).append(param)
    o = cfg.optim
    return [
        {
            "params": params,
            "lr": o.lr * (o.backbone_lr_scale if is_backbone else 1.0),
            "weight_decay": 0.0 if no_decay else o.weight_decay,
        }
        for (is_backbone, no_decay), params in sorted(groups.items())
    ]


def cosine_with_warmup(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def check_resumable(saved_yaml: Path, cfg: Any) -> None:
    """Refuses to resume with a config that changes the run (other than :data:`_RESUMABLE_CHANGES`)."""
    saved = flat_dict(config_to_dict(load_config(saved_yaml, cls=type(cfg))))
    now = flat_dict(config_to_dict(cfg))
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in _RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"cannot resume: '{changed[0]}' is {now[changed[0]]!r} now but was {saved.get(changed[0])!r} in "
            f"{saved_yaml}; use the run's own config (only {', '.join(sorted(_RESUMABLE_CHANGES))} may change)"
        )


def build_model(cfg: UnderstandingRunConfig, num_classes: int, attribute_dim: int, vocab_sizes: tuple[int, int]):
    """The :class:`ExpertQueryCLIP` a config describes (backbone loaded or randomly initialised)."""
    m = cfg.model
    vision = load_clip_vision(m.backbone, seed=cfg.seed)
    try:
        return ExpertQueryCLIP(
            vision,
            num_classes,
            attribute_dim,
            query_mode=m.query_mode,
            num_scene_queries=m.num_scene_queries,
            num_object_queries=m.num_object_queries,
            scene_layer=m.scene_layer,
            object_layer=m.object_layer,
            ib_layers=m.ib_layers,
            beta_init=m.beta_init,
            num_scene_names=vocab_sizes[0],
            num_object_names=vocab_sizes[1],
            gradient_checkpointing=m.gradient_checkpointing,
        )
    except ValueError as err:
        raise ConfigError(f"model config: {err}") from None


def training_loader(train_set: EmotionImageDataset, cfg: Any, num_processes: int) -> tuple[Any, Any, int, int]:
    """(loader, its EpochSampler, micro-batch size, optimiser steps per epoch) for ``optim.batch_size`` split over
    processes and gradient-accumulation steps.

    Raises:
        ConfigError: the batch does not split evenly, or the split is smaller than one batch.
    """
    per_step = cfg.optim.batch_size
    divisor = num_processes * cfg.optim.grad_accum_steps
    if per_step % divisor:
        raise ConfigError(f"optim.batch_size={per_step} must be divisible by processes × grad_accum_steps = {divisor}")
    micro_batch = per_step // divisor
    sampler = EpochSampler(len(train_set), seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=micro_batch,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    steps_per_epoch = len(train_set) // (micro_batch * divisor)
    if steps_per_epoch == 0:
        raise ConfigError(f"the training split ({len(train_set)} images) is smaller than one batch ({per_step})")
    return loader, sampler, micro_batch, steps_per_epoch


def understanding_loss(
    out: Any, batch: dict[str, Any], vocab_embeds: dict[str, torch.Tensor], weights: Any, temperature: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_U = ce·L_CE + scene·L_S + object·L_O (METHOD §2) and its detached parts for logging.

    Args:
        out: the model's :class:`UnderstandingOutput` for the batch.
        batch: ``label``, ``scene_id``, ``object_id``.
        vocab_embeds: ``scene`` / ``object`` → (V, d_t) attribute text embeddings (empty: that loss is off).
        weights: the :class:`LossConfig`.
    """
    loss_ce = F.cross_entropy(out.logits.float(), batch["label"], label_smoothing=weights.label_smoothing)
    loss = weights.ce_weight * loss_ce
    parts = {"loss/ce": loss_ce.detach()}
    for which, embeds, weight in (
        ("scene", out.scene_embeds, weights.scene_weight),
        ("object", out.object_embeds, weights.object_weight),
    ):
        vocab = vocab_embeds[which]
        if embeds is None or not len(vocab):
            continue
        term = attribute_infonce(embeds, batch[f"{which}_id"], vocab, temperature)
        if term is not None:
            loss = loss + weight * term
            parts[f"loss/{which}"] = term.detach()
    return loss, parts


def train_understanding(cfg: UnderstandingRunConfig, resume: bool = False, progress: bool = True) -> TrainSummary:
    """Runs stage 1 as configured and returns its :class:`TrainSummary`.

    Raises:
        ConfigError / DataError / CheckpointError: bad configuration, data or backbone.
        TrainingError: a non-finite loss (the last good checkpoint stays in ``output_dir/last``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not cfg.output_dir:
        raise ConfigError("output_dir is required (e.g. output_dir=runs/my-run)")
    if not cfg.data.root:
        raise ConfigError("data.root is required: the dataset directory (e.g. data.root=/data/EmoSet-118K)")
    out_dir = Path(cfg.output_dir)
    last_dir = recover_directory(out_dir / "last")
    recover_directory(out_dir / "best")
    if resume and not (last_dir / "training_state.json").is_file():
        raise ConfigError(f"nothing to resume: {last_dir} has no training state (start without --resume)")
    if not resume and (last_dir.exists() or (out_dir / "best").exists()):
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another output_dir")
    if resume:
        check_resumable(last_dir / CONFIG_FILE, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        log_with="tensorboard",
        project_dir=str(out_dir / "logs"),
    )
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process

    # ---- data -------------------------------------------------------------------------------------------------
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.fold)
    train_samples = dataset.split(cfg.data.train_split)[: cfg.data.max_train_samples]
    val_samples = dataset.split(cfg.data.val_split)
    for note in dataset.notes:
        logger.info("data: %s", note)
    use_queries = cfg.model.query_mode != "none"
    scene_vocab, object_vocab = dataset.vocabularies(cfg.data.train_split) if use_queries else ([], [])
    if use_queries and not (scene_vocab or object_vocab):
        logger.warning("the dataset has no scene/object annotations: L_S and L_O are off, only L_CE trains")

    # ---- attribute text embeddings (frozen text tower, computed once) -----------------------------------------
    text_spec = cfg.model.text_model or cfg.model.backbone
    attribute_dim = 1
    vocab_embeds = {"scene": torch.zeros(0, 1), "object": torch.zeros(0, 1)}
    if use_queries:
        text_model, tokenizer = load_clip_text(text_spec, seed=cfg.seed)
        text_model.requires_grad_(False).eval()
        attribute_dim = text_model.config.projection_dim
        template = cfg.model.attribute_template
        for which, names in (("scene", scene_vocab), ("object", object_vocab)):
            vocab_embeds[which] = encode_texts(text_model, tokenizer, [template.format(n) for n in names])
        del text_model

    # ---- model ------------------------------------------------------------------------------------------------
    model = build_model(cfg, len(dataset.classes), attribute_dim, (len(scene_vocab), len(object_vocab)))
    model.scene_vocab_embeds.copy_(vocab_embeds["scene"].reshape(len(scene_vocab), attribute_dim))
    model.object_vocab_embeds.copy_(vocab_embeds["object"].reshape(len(object_vocab), attribute_dim))
    if cfg.model.freeze_backbone:
        model.vision.requires_grad_(False)
    transform = ClipTransform(model.image_size, augment=cfg.data.augment)
    train_set = EmotionImageDataset(
        train_samples, transform, scene_vocab, object_vocab, cfg.seed, cfg.data.on_bad_image
    )
    val_set = EmotionImageDataset(val_samples, ClipTransform(model.image_size), on_bad_image=cfg.data.on_bad_image)

    loader, sampler, micro_batch, steps_per_epoch = training_loader(train_set, cfg, accelerator.num_processes)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or eval_every

    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
    warmup = int(cfg.optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))
    if cfg.compile:
        model.compile()  # in place: the state dict keeps its names
    # accelerate gives each process its own micro-batches of the shuffled order.
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped = accelerator.unwrap_model(model)
    vocab_embeds = {"scene": unwrapped.scene_vocab_embeds, "object": unwrapped.object_vocab_embeds}  # on its device

    counters = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best_val_accuracy": -1.0,
        "best_step": 0,
        "skipped_images": 0,
    }
    if resume:
        load_weights(last_dir, accelerator.unwrap_model(model))
        counters = load_training_state(last_dir, optimizer, scheduler)
        if accelerator.scaler is not None and "grad_scaler" in counters:
            accelerator.scaler.load_state_dict(counters["grad_scaler"])
        logger.info(
            "resuming at step %d (epoch %d, batch %d)", counters["step"], counters["epoch"], counters["batch_in_epoch"]
        )

    config_yaml = config_yaml_text(cfg)
    meta_extra = {
        "dataset": {
            "root": str(dataset.root),
            "format": dataset.format,
            "train_counts": label_counts(train_samples, dataset.classes),
        },
        "backbone": cfg.model.backbone,
        "text_model": text_spec,
        "attribute_template": cfg.model.attribute_template,
        "temperature": cfg.model.temperature,
    }
    meta = checkpoint_meta(
        accelerator.unwrap_model(model), list(dataset.classes), scene_vocab, object_vocab, meta_extra
    )
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("understanding", config=flat_dict(config_to_dict(cfg)))
        logger.info(
            "stage 1: %d train / %d val images, %d classes, %s (%s), %d steps of batch %d (%d per epoch)",
            len(train_set),
            len(val_set),
            len(dataset.classes),
            cfg.model.backbone,
            cfg.model.query_mode,
            total_steps,
            cfg.optim.batch_size,
            steps_per_epoch,
        )

    def save_last() -> None:
        if is_main:
            if accelerator.scaler is not None:  # fp16: the loss scale continues on resume
                counters["grad_scaler"] = accelerator.scaler.state_dict()
            with atomic_directory(last_dir) as tmp:
                save_model(tmp, accelerator.unwrap_model(model), meta, config_yaml)
                save_training_state(tmp, optimizer, scheduler, counters)
        accelerator.wait_for_everyone()

    def evaluate_and_select() -> float:
        accuracy = float("nan")
        if is_main:
            probs, labels, _, bad = predict_dataset(
                accelerator.unwrap_model(model), val_set, batch_size=micro_batch, num_workers=cfg.data.num_workers
            )
            if len(labels) == 0:
                raise TrainingError(f"no readable image in the validation split ({len(bad)} skipped)")
            report = classification_report(probs.argmax(1), labels, list(dataset.classes))
            accuracy = report.accuracy
            accelerator.log({"val/accuracy": accuracy}, step=counters["step"])
            append_jsonl(out_dir / "metrics.jsonl", {"step": counters["step"], "val_accuracy": accuracy})
            if accuracy > counters["best_val_accuracy"]:
                counters["best_val_accuracy"], counters["best_step"] = accuracy, counters["step"]
                with atomic_directory(out_dir / "best") as tmp:
                    save_model(
                        tmp,
                        accelerator.unwrap_model(model),
                        {**meta, "val_accuracy": accuracy, "step": counters["step"]},
                        config_yaml,
                    )
        accelerator.wait_for_everyone()
        return accuracy

    # ---- loop -------------------------------------------------------------------------------------------------
    model.train()
    bar = tqdm(
        total=total_steps,
        initial=counters["step"],
        desc="stage 1",
        disable=not (progress and is_main),
        dynamic_ncols=True,
    )
    start_time, start_step = time.perf_counter(), counters["step"]
    temperature = cfg.model.temperature
    weights = cfg.loss
    running: dict[str, float] = {}
    synced_batch = counters["batch_in_epoch"]
    try:
        while counters["step"] < total_steps:
            # Resuming mid-epoch: the sampler leaves out the micro-batches of all processes already trained on.
            sampler.begin_epoch(
                counters["epoch"], skip=counters["batch_in_epoch"] * micro_batch * accelerator.num_processes
            )
            train_set.begin_epoch(counters["epoch"])
            for batch in loader:
                counters["batch_in_epoch"] += 1
                counters["skipped_images"] += len(batch["bad"])
                if "pixel_values" not in batch:
                    continue
                with accelerator.accumulate(model):
                    out = model(batch["pixel_values"])
                    loss, parts = understanding_loss(out, batch, vocab_embeds, weights, temperature)
                    if not torch.isfinite(loss):
                        kept = (
                            f"the last good checkpoint is in {last_dir}" if last_dir.exists() else "no checkpoint yet"
                        )
                        raise TrainingError(
                            f"the loss became {loss.item()} at step {counters['step']} ({kept}); "
                            "lower optim.lr or use mixed_precision=no"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    parts["loss/total"] = loss.detach()
                    parts["train/accuracy"] = (out.logits.argmax(-1) == batch["label"]).float().mean()
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
                    logs = {k: v / n for k, v in running.items()}
                    logs["lr"] = scheduler.get_last_lr()[-1]
                    accelerator.log(logs, step=step)
                    if is_main:
                        append_jsonl(out_dir / "metrics.jsonl", {"step": step, **logs})
                    bar.set_postfix(loss=f"{logs['loss/total']:.3f}", acc=f"{logs['train/accuracy']:.2f}")
                    running = {}
                if step % eval_every == 0 or step == total_steps:
                    acc = evaluate_and_select()
                    if is_main:
                        line = f"step {step}: val accuracy {acc:.2%} (best {counters['best_val_accuracy']:.2%})"
                        bar.write(line) if progress else logger.info(line)
                if step % save_every == 0 or step == total_steps:
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
    if accelerator.num_processes > 1:  # selection happened on the main process: let every process report it
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([{k: counters[k] for k in ("best_val_accuracy", "best_step")}])[0]
        counters.update(shared)
    end_training(accelerator)
    if counters["skipped_images"]:
        logger.warning("skipped %d unreadable training images (data.on_bad_image=skip)", counters["skipped_images"])
    summary = TrainSummary(
        best_val_accuracy=counters["best_val_accuracy"],
        best_step=counters["best_step"],
        steps=counters["step"],
        seconds=elapsed,
        seconds_per_step=elapsed / max(1, counters["step"] - start_step),
        skipped_images=counters["skipped_images"],
        output_dir=str(out_dir),
        main_process=is_main,
    )
    if is_main:
        write_atomic(out_dir / "summary.json", json.dumps(summary.__dict__, indent=1))
    return summary


def end_training(accelerator: Any) -> None:
    """Closes the trackers and destroys the process group. With several processes, first a barrier and a pause
    with the GIL released: gloo's worker threads drop a finished collective's tensors after the caller has moved
    on, and dropping a tensor Python created needs the GIL, which the main thread holds while it joins those
    threads in the process group's destructor. A worker once hung at exit that way (py-spy: the main thread in
    ``~ProcessGroupGloo`` → ``thread::join``, a gloo thread waiting in ``gil_scoped_acquire``)."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        time.sleep(0.2)
    accelerator.end_training()


def config_yaml_text(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
