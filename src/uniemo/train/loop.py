"""What every training stage shares: opening a run, its batches, its updates, logs and checkpoints.

Each stage writes its own loop (:mod:`.understanding`, :mod:`.joint`) with these:

* :func:`open_run` — the run directory (refused if it already holds a run, unless resuming with a config that
  changes only :data:`RESUMABLE_CHANGES`), threads, the Accelerator and the seed;
* :func:`training_loader` and :func:`adamw_cosine` — the batch split over processes and accumulation steps, AdamW
  with a linear warm-up and a cosine decay;
* :class:`Trainer` — restore on resume and ``accelerator.prepare``; then :meth:`Trainer.batches` (epoch after epoch,
  resuming mid-epoch), :meth:`Trainer.update` (the finite-loss check, backward, clipping, the optimiser and schedule
  step, running means logged every ``log_every`` steps), :meth:`Trainer.due`, one :meth:`Trainer.log`
  (TensorBoard and ``metrics.jsonl`` under the same keys) and one :meth:`Trainer.save` (a checkpoint directory
  written atomically; ``last/`` with the optimiser, scheduler, RNG and :class:`RunState`, so that a resumed run
  trains on exactly the batches the interrupted one had not).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
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
    "model.preset",  # a name for the model keys it sets; those are compared
    "joint.gradient_checkpointing",
    "joint.feature_cache",
    "joint.diagnostic_images",
    "joint.diagnostic_draws",
    "joint.sampling_steps",
    "joint.sampling_guidance",
    "joint.sampling_scheduler",
    "joint.sampling_diversity",
}


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
    """What a stage's loop needs besides its model and its loss (the module docstring).

    A stage writes its loop with it, the way accelerate's examples are written::

        trainer = Trainer(run, "stage 1", model, optimizer, scheduler, loader, sampler, total_steps)
        try:
            for batch in trainer.batches():
                with run.accelerator.accumulate(trainer.model):
                    loss, parts = ...                      # the stage's forward and loss
                    if not trainer.update(loss, parts):    # backward, clipping, optimiser and schedule step
                        continue                           # (a micro-batch of an accumulation)
                if trainer.due(eval_every):
                    trainer.log({"val/accuracy": ...})
                if trainer.due(save_every) and not trainer.done:
                    trainer.save("last", meta)
        except KeyboardInterrupt:
            raise trainer.interrupted(meta) from None

    On construction: the state of ``last/`` is restored when resuming (weights, optimiser, scheduler, RNG, loss
    scale, :class:`RunState` with the stage's ``record``), the model, optimiser and loader are prepared for the
    Accelerator, and the main process opens the run directory and its trackers. ``model`` is then the prepared
    model, ``unwrapped`` the module itself.

    Attributes:
        record: what the stage keeps with the run, restored on resume (stage 1: the best validation accuracy and
            its step; stage 2: the prior and the test accuracy before training).
        seconds / steps_run: wall time and optimiser steps of this invocation's :meth:`batches`.
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
        record: dict[str, Any] | None = None,
    ) -> None:
        self.run = run
        self.cfg = run.cfg
        self.accelerator = run.accelerator
        self.name = name
        self.total_steps = total_steps
        self.sampler = sampler
        self.train_set = loader.dataset
        self.micro_batch = loader.batch_size
        self.state = RunState(values=dict(record or {}))
        self.config_yaml = config_yaml_text(self.cfg)
        if run.resume:
            load_weights(run.last_dir, model)
            counters = load_training_state(run.last_dir, optimizer, scheduler)
            scale = counters.pop("grad_scaler", None)
            if self.accelerator.scaler is not None and scale is not None:
                self.accelerator.scaler.load_state_dict(scale)
            self.state = RunState.from_dict(counters)
            logger.info("resuming at step %d (epoch %d, batch %d)", *self.position())
        self.record = self.state.values
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.scheduler = scheduler
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.seconds = 0.0
        self.steps_run = 0
        self.last_logs: dict[str, float] = {}
        self._running: dict[str, float] = {}
        self._synced_batch = self.state.batch_in_epoch
        self.bar: Any = None
        self.postfix: dict[str, str] = {}
        if run.is_main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            self.accelerator.init_trackers(name, config=flat_dict(config_to_dict(self.cfg)))

    @property
    def step(self) -> int:
        """Optimiser steps taken."""
        return self.state.step

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def position(self) -> tuple[int, int, int]:
        return self.state.step, self.state.epoch, self.state.batch_in_epoch

    def batches(self, progress: bool = True, postfix: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """The training micro-batches until ``total_steps`` optimiser steps are taken, epoch after epoch; a resumed
        run starts where the interrupted one left (mid-epoch: the micro-batches of every process already trained on
        are left out). Micro-batches without a readable image are skipped (and counted).

        Args:
            postfix: progress-bar label → logged key shown after each logging step.
        """
        state = self.state
        self.postfix = dict(postfix or {})
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
            while not self.done:
                skip = state.batch_in_epoch * self.micro_batch * self.accelerator.num_processes
                self.sampler.begin_epoch(state.epoch, skip=skip)
                self.train_set.begin_epoch(state.epoch)
                for batch in self.loader:
                    state.batch_in_epoch += 1
                    state.skipped_images += len(batch["bad"])
                    if "pixel_values" in batch:  # else every image of the micro-batch was unreadable
                        yield batch
                    if self.done:
                        break
                else:
                    state.epoch += 1
                    state.batch_in_epoch = self._synced_batch = 0
        finally:
            self.bar.close()  # ends the progress line, so an error message starts on its own line
        self.seconds, self.steps_run = time.perf_counter() - start_time, state.step - start_step

    def update(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> bool:
        """Back-propagates a micro-batch's ``loss`` (inside ``accelerator.accumulate``) and, when it completes an
        accumulation, clips the gradients, steps the optimiser and the schedule, counts the step and logs the
        running means of ``parts`` every ``log_every`` steps and at the last. True when an optimiser step was taken.

        Raises:
            TrainingError: the loss is not finite (``last/`` keeps the last good state).
        """
        acc, state = self.accelerator, self.state
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
        for key, value in {**parts, "loss/total": loss.detach()}.items():
            self._running[key] = self._running.get(key, 0.0) + float(value)
        self._running["_n"] = self._running.get("_n", 0.0) + 1
        if not acc.sync_gradients:
            return False
        state.step += 1
        self._synced_batch = state.batch_in_epoch  # an interruption resumes after this batch
        self.bar.update(1)
        if self.due(self.cfg.log_every) or self.done:
            n = self._running.pop("_n")
            self.last_logs = {k: v / n for k, v in self._running.items()}
            self.log({**self.last_logs, "lr": self.scheduler.get_last_lr()[-1]})
            self.bar.set_postfix(
                {k: f"{self.last_logs[key]:.3f}" for k, key in self.postfix.items() if key in self.last_logs}
            )
            self._running = {}
        return True

    def due(self, every: int | None) -> bool:
        """Whether the step just taken is a multiple of ``every`` (never for 0 or None)."""
        return bool(every) and self.state.step % every == 0

    def log(self, record: dict[str, Any]) -> None:
        """Figures at the current step: to the trackers (every process, as accelerate wants) and, on the main
        process, to ``metrics.jsonl``, under the same keys."""
        self.accelerator.log(record, step=self.state.step)
        if self.run.is_main:
            append_jsonl(self.run.out_dir / "metrics.jsonl", {"step": self.state.step, **record})

    def say(self, line: str) -> None:
        """A line for the user: above the progress bar while it runs, else to the log."""
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            logger.info(line)

    def share(self, value: Any) -> Any:
        """The main process's ``value`` on every process (what only the main process measured)."""
        if self.accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def save(self, name: str, meta: dict[str, Any]) -> None:
        """Writes the checkpoint ``name/`` of the run atomically: the weights, ``meta`` as ``model.json`` and the
        config; ``last/`` also gets the training state that ``--resume`` continues from. Every process waits."""
        if self.run.is_main:
            with atomic_directory(self.run.out_dir / name) as tmp:
                save_model(tmp, self.unwrapped, meta, self.config_yaml)
                if name == "last":
                    counters = self.state.to_dict()
                    if self.accelerator.scaler is not None:  # fp16: the loss scale continues on resume
                        counters["grad_scaler"] = self.accelerator.scaler.state_dict()
                    save_training_state(tmp, self.optimizer, self.scheduler, counters)
        self.accelerator.wait_for_everyone()

    def interrupted(self, meta: dict[str, Any]) -> TrainingError:
        """After Ctrl-C: writes ``last/`` (the micro-batches after the last optimiser step are redone on resume)
        and returns the error that tells the user how to continue."""
        if self.bar is not None:
            self.bar.close()
        self.state.batch_in_epoch = self._synced_batch
        self.save("last", meta)
        return TrainingError(
            f"interrupted at step {self.state.step}; the state is saved in {self.run.last_dir}: add --resume to "
            "continue"
        )

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
