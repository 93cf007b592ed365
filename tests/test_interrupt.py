"""A training process killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.conftest import micro_overrides

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
    state = killed / "last" / "training_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["counters"]["step"] >= 6:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass  # not written yet, or caught between the renames of an atomic swap
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = subprocess.run(
        _command(synth_dir, killed, "--resume"), capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr
    a = load_file(str(reference / "last" / "model.safetensors"))
    b = load_file(str(killed / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "summary.json").read_text())["steps"] == STEPS
