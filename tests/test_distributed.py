"""Two real processes (DDP over gloo on the CPU) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import free_port, joint_overrides, micro_overrides

TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun() -> list[str]:
    """torchrun for two processes, its rendezvous on a port that is free now."""
    return [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this Python")
def test_two_processes_match_one_with_the_same_global_batch(synth_dir, tmp_path):
    # L_S / L_O contrast within each process's micro-batch (fewer negatives than one process sees), so the
    # equivalence is checked on the cross-entropy path, where DDP's gradient average is the global mean.
    common = ["data.augment=false", "loss.scene_weight=0", "loss.object_weight=0", "threads=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    runs = {}
    for name, launcher in (
        ("two", [*torchrun(), "-m", "uniemo"]),
        ("one", [sys.executable, "-m", "uniemo"]),
    ):
        out = tmp_path / name
        cmd = [*launcher, "train", "understanding", "--config", "tiny", *micro_overrides(synth_dir, out), *common]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("stage 1 done") == 1, result.stdout  # only the main process reports
        runs[name] = load_file(str(out / "last" / "model.safetensors"))
    # Tolerance: the gradients are summed in another order, and AdamW turns tiny differences in near-zero
    # gradients into visible ones; half of one step's size (lr 1e-3) after 12 steps. A different global batch
    # moves weights by whole steps: the per-process InfoNCE negatives alone moved them by 8e-3 in this setting.
    worst = max((runs["two"][k] - runs["one"][k]).abs().max().item() for k in runs["one"])
    assert worst < 5e-4, f"2-process weights differ from 1-process weights by {worst}"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this Python")
def test_joint_training_in_two_processes_matches_one(synth_dir, trained_run, tmp_path):
    # The deterministic paths must agree: L_CE and L_cond=ce average over the global batch under DDP exactly as
    # in one process. The diffusion noise is drawn per process (seed, step, rank), so one process and two see
    # different noise for the same images: L(θ) is weighted 0 here, and run in full below only for completion.
    equal = ["loss.scene_weight=0", "loss.object_weight=0", "joint.condition_loss=ce", "joint.diffusion_weight=0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    runs = {}
    for name, launcher, extra in (
        ("two", [*torchrun(), "-m", "uniemo"], equal),
        ("one", [sys.executable, "-m", "uniemo"], equal),
        ("full", [*torchrun(), "-m", "uniemo"], []),
    ):
        out = tmp_path / name
        overrides = joint_overrides(synth_dir, trained_run, out, steps=6) + ["threads=1", "data.augment=false"]
        cmd = [*launcher, "train", "joint", "--config", "tiny-joint", *overrides, *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("stage 2 done") == 1, result.stdout  # only the main process reports
        runs[name] = load_file(str(out / "last" / "model.safetensors"))
        # only the main process writes: TensorBoard files of one process id, each logged step once
        events = list((out / "logs").rglob("events.out.tfevents.*"))  # name: …tfevents.<time>.<host>.<pid>.<n>
        assert events and len({e.name.split(".")[-2] for e in events}) == 1, events
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss/total" in r]
        assert len(steps) == len(set(steps)) == 3  # log_every=2, 6 steps
        assert [r["step"] for r in rows if "diag/loss_own" in r] == [0, 6]  # the diagnostic: before and after
    worst = max((runs["two"][k] - runs["one"][k]).abs().max().item() for k in runs["one"])
    assert worst < 5e-4, f"2-process weights differ from 1-process weights by {worst}"


SHARDING = """
import json, sys
import torch
from accelerate import Accelerator
from uniemo.config import load_config
from uniemo.data.datasets import EmotionImageDataset, open_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.train.loop import training_loader

data, out, resume_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
accelerator = Accelerator(cpu=True)
cfg = load_config(None, [f"data.root={data}", "optim.batch_size=32", "data.max_train_samples=150"])
samples = open_dataset(data).split("train")[:150]
dataset = EmotionImageDataset(samples, ClipTransform(8))
loader, sampler, micro, _ = training_loader(dataset, cfg, accelerator.num_processes)
loader = accelerator.prepare(loader)
seen = {}
for epoch in (0, 1):
    sampler.begin_epoch(epoch, skip=resume_batch * micro * accelerator.num_processes if epoch == 1 else 0)
    seen[epoch] = [i for batch in loader for i in batch["index"].tolist()]
json.dump(seen, open(f"{out}/rank{accelerator.process_index}.json", "w"))
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this Python")
def test_two_processes_shard_each_epoch_without_duplicates_or_gaps(synth_dir, tmp_path):
    """150 images, batch 32 over 2 processes (16 each): 4 full steps an epoch, 128 images, each seen by exactly
    one process; the 22 left over are a different set every epoch (drop_last). A resumed epoch (skip 2 batches)
    continues with exactly the images the uninterrupted epoch had left."""
    script = tmp_path / "shard.py"
    script.write_text(SHARDING)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    runs = {}
    for name, skip in (("full", 0), ("resumed", 2)):
        out = tmp_path / name
        out.mkdir()
        cmd = [*torchrun(), str(script), str(synth_dir), str(out)]
        result = subprocess.run([*cmd, str(skip)], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        a, b = (runs["full"][r][epoch] for r in (0, 1))
        assert len(a) == len(b) == 64 and not set(a) & set(b) and len(set(a) | set(b)) == 128
    assert set(runs["full"][0]["0"]) | set(runs["full"][1]["0"]) != set(runs["full"][0]["1"]) | set(
        runs["full"][1]["1"]
    )  # reshuffled each epoch
    for r in (0, 1):  # 2 batches of 16 skipped per process: the resumed epoch is the rest of the same epoch
        assert runs["resumed"][r]["1"] == runs["full"][r]["1"][32:]
