"""Checkpoints as directories: ``model.json`` + ``model.safetensors`` + ``config.yaml`` (+ training state).

Nothing here unpickles: weights, optimiser moments and RNG states are safetensors tensors, everything else
JSON or YAML. Directories are written beside their destination and renamed into place, so a crash during a
write leaves the previous checkpoint whole.

A run directory holds ``best/`` (the model of the best validation accuracy), ``last/`` (the latest model
with its training state, for ``--resume``), ``logs/`` (TensorBoard) and ``metrics.jsonl``. Functions that
take a checkpoint accept the run directory too and use its ``best/`` (or ``last/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from uniemo.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
CONFIG_FILE = "config.yaml"
#: ``model.json``'s ``kind`` of a stage-1 checkpoint and of a joint (stage-2) one.
UNDERSTANDING_KIND = "understanding"
JOINT_KIND = "uniemo"
#: where a joint checkpoint saved with its diffusion model keeps that model.
SAVED_DIFFUSION = "diffusion"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: ``owner/name`` as the hub spells repository ids (a path that exists on disk is always taken as a path).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yields a temporary directory that replaces ``path`` once the block finishes without error.

    The swap renames the old directory aside, renames the new one into place, then deletes the old one; if
    the process dies in between, :func:`resolve_checkpoint` still finds the aside copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file beside it and a rename: a reader (or a process killed
    half-way) sees the old file or the new one, never a cut one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def recover_directory(path: str | Path) -> Path:
    """Finishes an :func:`atomic_directory` swap that a killed process left half done, and removes its debris.

    If the process died between moving the old copy aside and moving the new one in, the old copy is put back.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)
    for debris in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(debris, ignore_errors=True)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return path


def is_hub_id(spec: str | Path) -> bool:
    """Whether ``spec`` names a hub repository (``owner/name``) rather than a path on this machine."""
    text = str(spec)
    return not Path(text).expanduser().exists() and bool(_HUB_ID.match(text))


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """The hub repository ``repo_id`` at ``revision`` (a branch, tag or commit; default ``main``) in the hub cache:
    downloaded there by ``huggingface_hub``, or read from it when ``HF_HUB_OFFLINE=1`` or the hub is unreachable.

    Raises:
        CheckpointError: the repository or revision does not exist, or it is not cached and cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from uniemo import __version__

    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="uniemo", library_version=__version__))
    except RevisionNotFoundError:
        raise CheckpointError(f"the hub repository '{repo_id}' has no revision '{revision}'") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"'{repo_id}' is neither a local directory nor a model repository on the hub (a private one needs "
            "`hf auth login` first)"
        ) from None
    except (LocalEntryNotFoundError, IncompleteSnapshotError):
        at = f" at revision '{revision}'" if revision else ""
        raise CheckpointError(
            f"'{repo_id}' is neither a local directory nor in the hub cache{at}, and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1): download it once with network access, or give a checkpoint directory"
        ) from None


def resolve_checkpoint(path: str | Path, revision: str | None = None) -> Path:
    """A model directory from a checkpoint path, a run directory (its ``best/``, else ``last/``) or a hub id
    (``owner/name``, at ``revision``: see :func:`download_checkpoint`).

    Raises:
        CheckpointError: nothing loadable is there (with what is missing, and pickles named as refused), or a
            ``revision`` given with a local path.
    """
    if is_hub_id(path):
        path = download_checkpoint(str(path), revision)
    elif revision is not None:
        raise CheckpointError(f"a revision applies to a hub id (owner/name), not to the local path {path}")
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path} is a pickle file; uniemo loads weights only from safetensors checkpoint directories "
                "(pickles can run code when loaded)"
            )
        raise CheckpointError(f"{path} is a file; give a checkpoint directory (with {META_FILE} and {MODEL_FILE})")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    for candidate in (path, path / "best", path / "last", path / ".last.old"):
        if (candidate / META_FILE).is_file():
            return candidate
    pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); uniemo loads safetensors checkpoints only"
        )
    raise CheckpointError(f"{path} is not a uniemo checkpoint: {META_FILE} is missing (no best/ or last/ either)")


def save_model(directory: Path, model: torch.nn.Module, meta: dict[str, Any], config_yaml: str | None = None) -> None:
    """Writes ``model.json`` (``meta`` + format version) and ``model.safetensors`` into ``directory``."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE), metadata={"format": "pt", "uniemo_version": str(FORMAT_VERSION)})
    (directory / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=1))
    if config_yaml is not None:
        (directory / CONFIG_FILE).write_text(config_yaml)


def read_meta(directory: Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Reads and checks ``model.json`` of a checkpoint of ``kind`` (e.g. ``understanding``, or any of a tuple)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{directory / META_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in kinds:
        found = meta.get("kind") if isinstance(meta, dict) else None
        wanted = " or ".join(f"'{k}'" for k in kinds)
        raise CheckpointError(f"{directory} is a '{found}' checkpoint, not a uniemo {wanted} checkpoint")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} was written by a newer uniemo (format {meta['format_version']}); upgrade")
    return meta


def load_weights(directory: Path, model: torch.nn.Module, prefix: str = "") -> None:
    """Loads ``model.safetensors`` into ``model`` strictly (only the tensors under ``prefix``, when given: the
    understanding part of a joint checkpoint is ``understanding.``).

    Raises:
        CheckpointError: the file is missing or corrupt, or its tensors do not fit ``model``'s architecture.
    """
    file = directory / MODEL_FILE
    if not file.is_file():
        raise CheckpointError(f"{directory} has no {MODEL_FILE}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors file ({err})") from None
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if hasattr(model, "convert_state_dict"):  # tensors renamed since the checkpoint was written (timm's filter)
        state = model.convert_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {unexpected[0]}"
            if unexpected
            else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
        raise CheckpointError(
            f"{file} holds another architecture than {directory / META_FILE} describes ({detail}); "
            "the checkpoint is inconsistent or was written for a different model"
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------------------
# Training state (optimiser, scheduler, RNG, counters): safetensors + JSON, never pickle


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state_dict["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any, counters: dict[str, Any]
) -> None:
    """Writes optimiser moments, scheduler, RNG states and ``counters`` (step, epoch, …) into ``directory``."""
    tensors, rest = _flatten_optimizer(optimizer.state_dict())
    tensors["__rng_torch__"] = torch.get_rng_state()
    save_file(tensors, str(directory / "training_state.safetensors"))
    state = {"optimizer": rest, "scheduler": scheduler.state_dict(), "counters": counters}
    (directory / "training_state.json").write_text(json.dumps(state))


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restores what :func:`save_training_state` wrote and returns the counters."""
    try:
        tensors = load_file(str(directory / "training_state.safetensors"))
        state = json.loads((directory / "training_state.json").read_text())
    except (FileNotFoundError, SafetensorError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory} has no readable training state to resume from ({err})") from None
    torch.set_rng_state(tensors.pop("__rng_torch__"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    return state["counters"]


def load_optimizer_moments(directory: Path, optimizer: torch.optim.Optimizer) -> bool:
    """Puts the per-parameter state (AdamW's moments and step counts) that a finished run saved in ``directory``
    into a new ``optimizer`` over the same parameters, keeping the new optimizer's own hyper-parameters (lr,
    schedule, weight decay). A run continued from another starts where that one's moments were instead of from
    zero, where AdamW's first steps move every parameter by about the learning rate whatever its gradient.

    Returns:
        False, leaving ``optimizer`` as it was, when ``directory`` holds no training state or one over other
        parameters (another architecture or other parameter groups).
    """
    try:
        tensors = load_file(str(directory / "training_state.safetensors"))
        rest = json.loads((directory / "training_state.json").read_text())["optimizer"]
    except (FileNotFoundError, SafetensorError, json.JSONDecodeError, KeyError):
        return False
    tensors.pop("__rng_torch__", None)
    saved = _unflatten_optimizer(tensors, rest)
    own = optimizer.state_dict()
    sizes = [len(g["params"]) for g in own["param_groups"]]
    if sizes != [len(g["params"]) for g in saved["param_groups"]]:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, state in saved["state"].items():
        moments = [v for k, v in state.items() if k.startswith("exp_avg") and isinstance(v, torch.Tensor)]
        if pid >= len(params) or any(m.shape != params[pid].shape for m in moments):
            return False
    optimizer.load_state_dict({"state": saved["state"], "param_groups": own["param_groups"]})
    return True
