"""A training process killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.conftest import joint_overrides, micro_overrides

STEPS = 40


def _command(synth_dir, out, *extra):
    overrides = micro_overrides(synth_dir, out, steps=STEPS) + ["save_every=2", "eval_every=10", "threads=1"]
    return [sys.executable, "-m", "uniemo", "train", "understanding", "--config", "tiny", *overrides, *extra]


def test_sigkill_then_resume_is_bit_exact(synth_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    done = subprocess.run(_command(synth_dir, reference), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(synth_dir, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _kill_when(proc, killed / "last" / "training_state.json", 6)

    resumed = subprocess.run(
        _command(synth_dir, killed, "--resume"), capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr
    a = load_file(str(reference / "last" / "model.safetensors"))
    b = load_file(str(killed / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "summary.json").read_text())["steps"] == STEPS


def _kill_when(proc: subprocess.Popen, state, step: int, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["counters"]["step"] >= step:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass  # not written yet, or caught between the renames of an atomic swap
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"


def test_joint_training_sigkill_then_resume_is_bit_exact(synth_dir, trained_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def command(out, *extra):
        overrides = joint_overrides(synth_dir, trained_run, out, steps=10) + ["threads=1"]
        return [sys.executable, "-m", "uniemo", "train", "joint", "--config", "tiny-joint", *overrides, *extra]

    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _kill_when(proc, killed / "last" / "training_state.json", 4)
    resumed = subprocess.run(command(killed, "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr
    a = load_file(str(reference / "last" / "model.safetensors"))
    b = load_file(str(killed / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "summary.json").read_text())["steps"] == 10


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    from uniemo.checkpoint import recover_directory

    target = tmp_path / "last"
    target.mkdir()
    (target / "model.json").write_text("old")
    script = (
        "import pathlib, sys, time\n"
        "from uniemo.checkpoint import atomic_directory\n"
        f"with atomic_directory(pathlib.Path({str(target)!r})) as tmp:\n"
        "    (tmp / 'model.json').write_text('new')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert (target / "model.json").read_text() == "old"
    assert list(tmp_path.glob(".last.tmp-*")), "the half-written copy should be beside it"
    recover_directory(target)  # what every run does first
    assert (target / "model.json").read_text() == "old" and not list(tmp_path.glob(".last.*"))
