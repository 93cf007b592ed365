"""Shared fixtures: a small built-in dataset and a briefly trained micro checkpoint (session-scoped)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Features reused across runs (the classifier prior's) go to a fresh directory, not the user's cache.
os.environ.setdefault("UNIEMO_CACHE", tempfile.mkdtemp(prefix="uniemo-test-cache-"))

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (a fixed port fails when something else on the machine holds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from uniemo.data.synth import SynthConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "synth"
    return write_synthetic_dataset(root, SynthConfig(train=320, val=64, test=96, resolution=32, seed=1))


def micro_overrides(data: Path, out: Path, steps: int = 12) -> list[str]:
    return [
        f"data.root={data}",
        f"output_dir={out}",
        "model.backbone=micro-clip",
        "model.num_scene_queries=4",
        "model.num_object_queries=4",
        "optim.batch_size=32",
        "optim.backbone_lr_scale=0.1",  # the setting tests/fixtures/legacy was written with
        f"optim.max_steps={steps}",
        "eval_every=6",
        "log_every=3",
    ]


@pytest.fixture(scope="session")
def trained_run(synth_dir, tmp_path_factory) -> Path:
    from uniemo.config import load_config
    from uniemo.train.understanding import train_understanding

    out = tmp_path_factory.mktemp("runs") / "micro"
    train_understanding(load_config(REPO / "configs" / "tiny.yaml", micro_overrides(synth_dir, out)), progress=False)
    return out


def joint_overrides(data: Path, stage1: Path, out: Path, steps: int = 4, diffusion: str = "tiny-sd") -> list[str]:
    return [
        f"data.root={data}",
        f"output_dir={out}",
        f"joint.understanding={stage1}",
        f"joint.diffusion={diffusion}",
        "joint.resolution=32",
        "joint.mapper_hidden=64",
        "joint.prior_epochs=3",
        "optim.batch_size=16",
        f"optim.max_steps={steps}",
        "save_every=2",
        "log_every=2",
        "joint.diagnostic_images=16",  # the conditioning diagnostic on a small probe (tests/test_conditioning.py)
        "joint.diagnostic_draws=1",
    ]


@pytest.fixture(scope="session")
def joint_run(synth_dir, trained_run, tmp_path_factory) -> Path:
    from uniemo.config import JointRunConfig, load_config
    from uniemo.train.joint import train_joint

    out = tmp_path_factory.mktemp("runs") / "joint"
    cfg = load_config(
        REPO / "configs" / "tiny-joint.yaml", joint_overrides(synth_dir, trained_run, out), JointRunConfig
    )
    train_joint(cfg, progress=False)
    return out
