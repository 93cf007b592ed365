"""The benchmark scripts run (at toy sizes, one repetition) and print what their closing JSON line promises.

Their numbers are measured by running them at full size (docs/speed.md); here only that they cannot rot.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_generation_speed_draws_the_plain_pipelines_images():
    out = _run("generation_speed.py", "--sizes", "tiny", "--reps", "1")
    (row,) = out["rows"]
    assert row["max_pixel_difference"] == 0  # same embeddings, scheduler and seeds: the same images
    assert row["ratio"]["median"] > 0 and row["scheduler"] == "dpm++" and out["allocator_tuned"] is True


def test_joint_step_times_every_part():
    (row,) = _run("joint_step.py", "--sizes", "tiny", "--reps", "1")["rows"]
    assert set(row["seconds"]) == {
        "joint", "textual_inversion", "vision_branch", "vae_encode", "text_encoder", "unet_fwd_bwd",
    }  # fmt: skip
    assert all(s["median"] > 0 for s in row["seconds"].values()) and row["joint_over_ti"]["median"] > 0


def test_understanding_throughput_and_classify_folder(tmp_path):
    rows = _run("understanding_throughput.py", "--sizes", "micro-clip", "--reps", "1")["rows"]
    assert [r["work"] for r in rows] == ["forward", "train"] and rows[0]["flop_ratio"] > 1
    out = _run("classify_folder.py", "--images", "24", "--size", "40", "--workers", "0", "--reps", "1",
               "--arch", "micro-clip", "--dir", str(tmp_path))  # fmt: skip
    assert out["rows"][0]["ratio_to_model_only"]["median"] > 0


def test_gpu_check_runs_its_whole_path_on_a_cpu():
    r = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stage1"]["images_per_s"] > 0 and out["joint"]["images_per_s"] > 0
    assert [g["images_per_call"] for g in out["generation"]["rows"]] == [1, 2]
    assert out["stage1"]["tflop_per_step"] > 0 and out["joint"]["tflop_per_step"] > 0


def test_paper_claims_decide_only_where_the_interval_does():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_claims

    above = paper_claims.verdict("c", "p", "m", 0.80, 0.70, (0.01, 0.19), 1000)
    below = paper_claims.verdict("c", "p", "m", 0.70, 0.80, (-0.19, -0.01), 1000)
    across = paper_claims.verdict("c", "p", "m", 0.71, 0.70, (-0.005, 0.025), 1000)
    assert (above["holds"], below["holds"], across["holds"]) == (True, False, None)
    assert not above["resolves_2_points"] and across["resolves_2_points"]  # half-widths 9 and 1.5 points
    # Emo-A pooled over the seeds by counts: 30/100 and 50/300 against 20/100 and 20/300
    measured = [{"emo_a": 0.3, "n": 100}, {"emo_a": 50 / 300, "n": 300}]
    control = [{"emo_a": 0.2, "n": 100}, {"emo_a": 20 / 300, "n": 300}]
    row = paper_claims.emo_a_claim("c", "p", measured, control)
    assert row["measured"] == pytest.approx(80 / 400) and row["control"] == pytest.approx(40 / 400)
    assert row["n"] == 400 and row["holds"] is True  # 10 points, the unpaired half-width is 4.6
    assert row["interval"][0] == pytest.approx(0.1 - 1.96 * (0.2 * 0.8 / 400 + 0.1 * 0.9 / 400) ** 0.5)


def test_paper_claims_train_again_a_kept_run_of_another_config(tmp_path):
    """A kept run counts only if it was trained with the row's config as it resolves now: the recipe's runs trained
    before ``joint.space_filter`` existed must not be reported under the filtered recipe's name."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_claims
    from uniemo.config import JointRunConfig, load_config, resolve_config_path, save_config

    def row(*overrides):
        return load_config(resolve_config_path("tiny-joint"), [f"output_dir={tmp_path}", *overrides], JointRunConfig)

    (tmp_path / "last").mkdir()
    save_config(row("joint.space_filter=none"), tmp_path / "last" / "config.yaml")
    assert not paper_claims.finished_with(tmp_path, row("joint.space_filter=none"))  # no summary: it did not finish
    (tmp_path / "summary.json").write_text("{}")
    assert paper_claims.finished_with(tmp_path, row("joint.space_filter=none"))
    assert not paper_claims.finished_with(tmp_path, row())  # the recipe now filters


def test_paper_claims_refuse_runs_kept_from_another_stand_in(tmp_path, monkeypatch):
    """A run's config names the stand-in, not its weights: runs kept from before the stand-in was retrained (or from
    before the benchmark recorded which stand-in it ran on) must not be reported as the shipped one's."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_claims
    import uniemo.data.synth

    def accepted(*args, **kwargs):
        raise RuntimeError("accepted")

    monkeypatch.setattr(uniemo.data.synth, "write_synthetic_dataset", accepted)
    profile = paper_claims.PROFILES["quick"]
    for recorded, kept in [
        (paper_claims.standin_record(), True),
        ("0123456789ab", False),  # another stand-in
        (None, False),  # a folder of the benchmark before it recorded the stand-in
    ]:
        kept_profile = {**profile, **({"standin": recorded} if recorded else {})}
        (tmp_path / "profile.json").write_text(json.dumps(kept_profile))
        with pytest.raises(RuntimeError if kept else SystemExit, match="accepted" if kept else "another stand-in"):
            paper_claims.Bench(tmp_path, profile)
