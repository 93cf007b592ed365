"""The training engine both stages run on: one setup and one loop, read top to bottom.

A stage brings its model, its data and its step (a batch → the loss and its parts); the engine does the rest:

* :func:`open_run` — the run directory (refused if it already holds a run, unless resuming with a config that
  changes only :data:`RESUMABLE_CHANGES`), threads, the Accelerator and the seed;
* :func:`training_loader` and :func:`adamw_cosine` — the batch split over processes and accumulation steps, AdamW
  with a linear warm-up and a cosine decay;
* :class:`Trainer` — restore on resume, ``accelerator.prepare``, then :meth:`Trainer.fit`: micro-batches, gradient
  accumulation, a finite-loss check, clipping, the optimiser and schedule step, running means logged every
  ``log_every`` steps (TensorBoard and ``metrics.jsonl``), the stage's hook after every optimiser step, ``last/``
  written atomically every ``save_every`` steps and on Ctrl-C with the optimiser, scheduler, RNG and
  :class:`RunState` — where in which epoch the run is, so that a resumed run trains on exactly the batches the
  interrupted one had not.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
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
from uniemo.config import config_to_dict, load_config
from uniemo.data.datasets import EmotionImageDataset, EpochSampler, collate
from uniemo.errors import ConfigError, UniEmoError

logger = logging.getLogger(__name__)

#: Keys that may differ between a run and its resumption (they do not change the weights' trajectory).
RESUMABLE_CHANGES = {
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

#: A stage's step: (micro-batch, run state) → (loss to back-propagate, its detached parts for logging).
StepFn = Callable[[dict[str, Any], "RunState"], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class TrainingError(UniEmoError):
    """Training cannot go on (a non-finite loss, an unusable split); the last good checkpoint is kept."""


@dataclass
class RunState:
    """Where a run is; saved as ``counters`` in ``last/training_state.json`` and restored on resume.

    Attributes:
        step: optimiser steps taken.
        epoch / batch_in_epoch: the epoch and the micro-batches of it already trained on (this process's count).
        skipped_images: unreadable training images skipped (this process's share).
        values: what the stage keeps with the run (stage 1: the best validation accuracy and its step; stage 2:
            the prior used and the accuracy before training).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_images: int = 0
    values: dict[str, Any] = field(default_factory=dict)

    _FIELDS = ("step", "epoch", "batch_in_epoch", "skipped_images")

    def to_dict(self) -> dict[str, Any]:
        return {**self.values, **{name: getattr(self, name) for name in self._FIELDS}}

    @classmethod
    def from_dict(cls, counters: dict[str, Any]) -> RunState:
        """The state of a ``counters`` dict, as every version of uniemo wrote it (one flat dict)."""
        rest = {k: v for k, v in counters.items() if k not in cls._FIELDS}
        return cls(**{name: int(counters.get(name, 0)) for name in cls._FIELDS}, values=rest)


@dataclass
class Run:
    """An opened run: its config, directories and Accelerator (:func:`open_run`)."""

    cfg: Any
    out_dir: Path
    last_dir: Path
    resume: bool
    accelerator: Any

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def open_run(cfg: Any, resume: bool, kept: tuple[str, ...] = ("last",), **accelerate: Any) -> Run:
    """Checks the run directory and opens the run: threads, Accelerator (``accelerate`` are extra keyword
    arguments), seed.

    The stage checks its required keys first (:func:`require`).

    Args:
        kept: the run's checkpoint directories (a half-written one is recovered; an existing one refuses a new run).

    Raises:
        ConfigError: the directory holds a run (without ``resume``), there is nothing to
            resume, or the config changes the run being resumed.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out_dir = Path(cfg.output_dir)
    last_dir = out_dir / "last"
    existing = [name for name in kept if recover_directory(out_dir / name).exists()]
    if resume and not (last_dir / "training_state.json").is_file():
        raise ConfigError(f"nothing to resume: {last_dir} has no training state (start without --resume)")
    if not resume and existing:
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
        **accelerate,
    )
    set_seed(cfg.seed)
    return Run(cfg, out_dir, last_dir, resume, accelerator)


def require(required: dict[str, tuple[Any, str]]) -> None:
    """Raises ConfigError for the first config key (→ (its value, an example)) that is unset."""
    for key, (value, example) in required.items():
        if not value:
            raise ConfigError(f"{key} is required (e.g. {key}={example})")


def check_resumable(saved_yaml: Path, cfg: Any) -> None:
    """Refuses to resume with a config that changes the run (other than :data:`RESUMABLE_CHANGES`)."""
    saved = flat_dict(config_to_dict(load_config(saved_yaml, cls=type(cfg))))
    now = flat_dict(config_to_dict(cfg))
    changed = sorted(k for k in now if now[k] != saved.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"cannot resume: '{changed[0]}' is {now[changed[0]]!r} now but was {saved.get(changed[0])!r} in "
            f"{saved_yaml}; use the run's own config (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )


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


def cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear from 1/warmup to 1 over ``warmup`` steps, then a cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adamw_cosine(groups: list[dict[str, Any]], optim: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW over parameter ``groups`` and its :func:`cosine_with_warmup` schedule, from an ``optim`` config."""
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)
    warmup = int(optim.warmup_ratio * total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))


class Trainer:
    """Runs a stage's step to ``total_steps`` with the run's optimiser, saving and logging (the module docstring).

    On construction: the state of ``last/`` is restored when resuming (weights, optimiser, scheduler, RNG, loss
    scale, :class:`RunState`), the model, optimiser and loader are prepared for the Accelerator, and the main
    process opens the run directory and its trackers. ``model`` is then the prepared model, ``unwrapped`` the
    module itself; ``meta`` (the checkpoint's ``model.json``) must be set before the first save. ``last/`` is
    written every ``save_every`` steps before the last (0: only on Ctrl-C and when the stage calls
    :meth:`save_last`).
    """

    def __init__(
        self,
        run: Run,
        name: str,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        loader: Any,
        sampler: Any,
        total_steps: int,
        save_every: int = 0,
        values: dict[str, Any] | None = None,
    ) -> None:
        self.run, self.cfg, self.accelerator = run, run.cfg, run.accelerator
        self.name, self.total_steps, self.save_every, self.sampler = name, total_steps, save_every, sampler
        self.train_set = loader.dataset
        self.micro_batch = loader.batch_size
        self.state = RunState(values=dict(values or {}))
        self.meta: dict[str, Any] = {}
        self.config_yaml = config_yaml_text(self.cfg)
        if run.resume:
            load_weights(run.last_dir, model)
            counters = load_training_state(run.last_dir, optimizer, scheduler)
            scale = counters.pop("grad_scaler", None)
            if self.accelerator.scaler is not None and scale is not None:
                self.accelerator.scaler.load_state_dict(scale)
            self.state = RunState.from_dict(counters)
            logger.info("resuming at step %d (epoch %d, batch %d)", *self.position())
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.scheduler = scheduler
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.seconds, self.steps_run, self.last_logs = 0.0, 0, {}
        self._running: dict[str, float] = {}
        self._synced_batch = self.state.batch_in_epoch
        self.bar: Any = None
        if run.is_main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            self.accelerator.init_trackers(name, config=flat_dict(config_to_dict(self.cfg)))

    def position(self) -> tuple[int, int, int]:
        return self.state.step, self.state.epoch, self.state.batch_in_epoch

    def fit(
        self,
        step: StepFn,
        after_step: Callable[[int], None] | None = None,
        progress: bool = True,
        postfix: dict[str, str] | None = None,
    ) -> dict[str, float]:
        """Trains until ``total_steps`` and returns the last logged means.

        Args:
            step: the stage's step on one micro-batch (called inside ``accelerator.accumulate``).
            after_step: called with the step number after every optimiser step (evaluation, diagnostics).
            postfix: progress-bar label → logged key shown after each logging step.

        Raises:
            TrainingError: a non-finite loss (``last/`` keeps the last good state), or Ctrl-C (``last/`` is written
                first; ``--resume`` continues from there).
        """
        state = self.state
        self.model.train()
        self.bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            desc=self.name,
            disable=not (progress and self.run.is_main),
            dynamic_ncols=True,
        )
        start_time, start_step = time.perf_counter(), state.step
        try:
            while state.step < self.total_steps:
                # Resuming mid-epoch: the sampler leaves out the micro-batches of all processes already trained on.
                self.sampler.begin_epoch(
                    state.epoch, skip=state.batch_in_epoch * self.micro_batch * self.accelerator.num_processes
                )
                self.train_set.begin_epoch(state.epoch)
                for batch in self.loader:
                    if self._train_on(batch, step) and self._after_optimiser_step(after_step, postfix or {}):
                        break
                else:
                    state.epoch += 1
                    state.batch_in_epoch = self._synced_batch = 0
        except KeyboardInterrupt:
            self.bar.close()
            state.batch_in_epoch = self._synced_batch  # micro-batches after the last optimiser step are redone
            self.save_last()
            where = self.run.last_dir
            raise TrainingError(
                f"interrupted at step {state.step}; the state is saved in {where}: add --resume to continue"
            ) from None
        finally:
            self.bar.close()  # ends the progress line, so an error message starts on its own line
        self.seconds, self.steps_run = time.perf_counter() - start_time, state.step - start_step
        return self.last_logs

    def _train_on(self, batch: dict[str, Any], step: StepFn) -> bool:
        """One micro-batch; True when it completed an optimiser step."""
        acc, state = self.accelerator, self.state
        state.batch_in_epoch += 1
        state.skipped_images += len(batch["bad"])
        if "pixel_values" not in batch:  # every image of the micro-batch was unreadable
            return False
        with acc.accumulate(self.model):
            loss, parts = step(batch, state)
            if not torch.isfinite(loss):
                kept = f"the last good checkpoint is in {self.run.last_dir}"
                raise TrainingError(
                    f"the loss became {loss.item()} at step {state.step} "
                    f"({kept if self.run.last_dir.exists() else 'no checkpoint yet'}); lower the learning rate "
                    "(optim.lr, joint.mapper_lr) or use mixed_precision=no"
                )
            acc.backward(loss)
            if acc.sync_gradients and self.cfg.optim.max_grad_norm > 0:
                acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss/total"] = loss.detach()
        for key, value in parts.items():
            self._running[key] = self._running.get(key, 0.0) + float(value)
        self._running["_n"] = self._running.get("_n", 0.0) + 1
        return bool(acc.sync_gradients)

    def _after_optimiser_step(self, after_step: Callable[[int], None] | None, postfix: dict[str, str]) -> bool:
        """Counts the step, logs, runs the stage's hook and saves on schedule; True when training is done."""
        state = self.state
        state.step += 1
        self._synced_batch = state.batch_in_epoch  # an interruption resumes after this batch
        self.bar.update(1)
        step, done = state.step, state.step >= self.total_steps
        if step % self.cfg.log_every == 0 or done:
            n = self._running.pop("_n")
            logs = {k: v / n for k, v in self._running.items()}
            self.last_logs = dict(logs)
            logs["lr"] = self.scheduler.get_last_lr()[-1]
            self.log(logs, step)
            self.bar.set_postfix({label: f"{logs[key]:.3f}" for label, key in postfix.items() if key in logs})
            self._running = {}
        if after_step is not None:
            after_step(step)
        if self.save_every and step % self.save_every == 0 and not done:
            self.save_last()
        return done

    def log(self, record: dict[str, Any], step: int) -> None:
        """To the trackers (every process, as accelerate wants) and, on the main process, to ``metrics.jsonl``."""
        self.accelerator.log(record, step=step)
        if self.run.is_main:
            append_jsonl(self.run.out_dir / "metrics.jsonl", {"step": step, **record})

    def say(self, line: str) -> None:
        """A line for the user: above the progress bar while it runs, else to the log."""
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            logger.info(line)

    def save_last(self, extra: dict[str, Any] | None = None) -> None:
        """Writes ``last/`` atomically (weights, ``meta`` updated by ``extra``, config, training state); all wait."""
        if self.run.is_main:
            counters = self.state.to_dict()
            if self.accelerator.scaler is not None:  # fp16: the loss scale continues on resume
                counters["grad_scaler"] = self.accelerator.scaler.state_dict()
            with atomic_directory(self.run.last_dir) as tmp:
                save_model(tmp, self.unwrapped, {**self.meta, **(extra or {})}, self.config_yaml)
                save_training_state(tmp, self.optimizer, self.scheduler, counters)
        self.accelerator.wait_for_everyone()

    def finish(self, summary: Any) -> Any:
        """Warns about skipped images, closes the trackers and writes ``summary.json`` (main process)."""
        if self.state.skipped_images and self.run.is_main:
            logger.warning("skipped %d unreadable training images (data.on_bad_image=skip)", self.state.skipped_images)
        end_training(self.accelerator)
        if self.run.is_main:
            write_atomic(self.run.out_dir / "summary.json", json.dumps(summary.__dict__, indent=1))
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


def flat_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; values other than numbers, strings and booleans as strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def config_yaml_text(cfg: Any) -> str:
    """The resolved config as the YAML saved with every checkpoint."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
