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


def _piece(key, seed, measured, control, standin="s", spec="x"):
    """A (claim, seed) piece whose per-image outcomes are the given 0/1 strings."""
    n = len(measured)
    return {
        "key": key,
        "seed": seed,
        "measured": measured.count("1") / n,
        "control": control.count("1") / n,
        "n": n,
        "discordant": sum(a != b for a, b in zip(measured, control)),
        "outcomes": {"measured": measured, "control": control},
        "standin": standin,
        "spec": spec,
        "commit": "c0ffee",
    }


def test_paper_claims_take_the_seed_as_the_unit():
    """The interval is Student's t over the per-seed differences (t(0.975, 2) = 4.303 from the table), never
    narrower than the pooled image-paired one; holds only from 3 seeds; powered against the paper's effect."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_claims

    claim = next(c for c in paper_claims.CLAIMS if c.key == "alpha")  # the paper's effect: 3.82 points
    # 40 images a seed; the method gets 30, 22 and 26 right, the control 10, 12 and 8 on the same images
    per_seed = [(30, 10), (22, 12), (26, 8)]
    pieces = [
        _piece("alpha", s, "1" * a + "0" * (40 - a), "1" * b + "0" * (40 - b)) for s, (a, b) in enumerate(per_seed)
    ]
    row = paper_claims.aggregate(claim, pieces, "full")
    d = [0.5, 0.25, 0.45]
    mean, sd = sum(d) / 3, (sum((x - sum(d) / 3) ** 2 for x in d) / 2) ** 0.5
    assert row["interval"] == pytest.approx([mean - 4.303 * sd / 3**0.5, mean + 4.303 * sd / 3**0.5], abs=1e-3)
    assert row["measured"] == pytest.approx(78 / 120) and row["control"] == pytest.approx(30 / 120)
    assert row["n"] == 120 and row["seeds"] == [0, 1, 2] and row["holds"] is True
    assert row["powered"] is False  # a half-width of 33 points cannot resolve the paper's 3.8
    assert [s["measured"] for s in row["per_seed"]] == [0.75, 0.55, 0.65] and row["standin"] == "s"
    assert row["pooled_interval"][1] - row["pooled_interval"][0] < row["interval"][1] - row["interval"][0]

    two = paper_claims.aggregate(claim, [pieces[0], pieces[2]], "full")
    assert two["interval"][0] > 0 and two["holds"] is None  # excludes 0, but two seeds do not decide

    # three seeds that agree exactly: the interval falls back to the images' width, not to zero
    same = [_piece("alpha", s, "1100110011", "1010101010") for s in range(3)]
    row = paper_claims.aggregate(claim, same, "full")
    assert row["interval"] == pytest.approx(row["pooled_interval"]) and row["interval"][1] > row["interval"][0]
    assert row["holds"] is None


def test_paper_claims_results_keep_only_pieces_of_this_stand_in_and_definition(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_claims

    alpha, ti = (next(c for c in paper_claims.CLAIMS if c.key == k) for k in ("alpha", "ti"))
    results = paper_claims.Results(tmp_path, "full", "s")
    for seed in range(3):
        results.write_piece(ti, _piece("ti", seed, "1110", "0110"))
        results.write_piece(alpha, _piece("alpha", seed, "1010", "0000", standin="old"))
    rows = results.gather()
    assert [r["key"] for r in rows] == ["ti"]  # alpha's pieces are of another stand-in
    assert [json.loads(line)["key"] for line in (tmp_path / "claims.jsonl").read_text().splitlines()] == ["ti"]
    assert results.kept(ti, 0, "x") is not None and results.kept(ti, 0, "changed") is None
    assert results.kept(alpha, 0, "x") is None and results.kept(ti, 5, "x") is None
    quick = paper_claims.Results(tmp_path, "quick", "s")
    quick.write_piece(ti, _piece("ti", 0, "10", "01"))
    quick.gather()
    assert (tmp_path / "claims-quick.jsonl").is_file() and len(rows) == 1  # the full table is not touched


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
