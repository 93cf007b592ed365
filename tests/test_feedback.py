"""Explicit feedback (Alg. 1): the rank window, the [η, δ) intersection, the ρ mix, `uniemo feedback` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO
from uniemo.cli.main import main
from uniemo.config import load_config
from uniemo.errors import ConfigError
from uniemo.train.feedback import mix_count, mix_in, rank_window, select_images


def test_rank_window_keeps_ranks_from_eta_m_up_to_delta_m():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.8, 0.2, 0.4, 0.0])
    # descending ranks: 0.9→0, 0.8→1, 0.7→2, 0.6→3, 0.5→4, 0.4→5, 0.3→6, 0.2→7, 0.1→8, 0.0→9
    # m = 10, η = 0.2, δ = 0.8: ranks 2…7 are kept → scores 0.7, 0.6, 0.5, 0.4, 0.3, 0.2
    kept = rank_window(scores, 0.2, 0.8)
    assert sorted(scores[kept].tolist()) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert rank_window(scores, 0.0, 1.0).all()
    # ties: the earlier image ranks first
    assert rank_window(np.array([0.5, 0.5, 0.5, 0.5]), 0.0, 0.5).tolist() == [True, True, False, False]


def test_selection_is_the_intersection_ranked_within_each_emotion():
    # two emotions of m = 5; window [1, 4) = ranks 1, 2, 3 (η = 0.2, δ = 0.8)
    emo = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.2, 0.3, 0.4, 0.5])
    sem = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    # group 0: emo ranks 0..4 → keep {1, 2, 3}; sem ranks 4,3,2,1,0 → keep {1, 2, 3}
    # group 1 (indices 5..9): emo ranks 4,3,2,1,0 → keep {6, 7, 8}; sem ranks 0..4 → keep {6, 7, 8}
    assert select_images(emo, sem, groups, 0.2, 0.8, "both").tolist() == [1, 2, 3, 6, 7, 8]
    sem2 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.8, 0.7, 0.6, 0.5])  # group 0 keeps {1,2,3}; group 1 {6,7,8}
    emo2 = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.1, 0.9, 0.8, 0.2, 0.7])  # ranks: 1→0, 2→1, 4→2, 3→3, 0→4
    # emo keeps {2, 4, 3} in group 0 and {7, 9, 8} in group 1; the intersection with sem: {2, 3} and {7, 8}
    assert select_images(emo2, sem2, groups, 0.2, 0.8, "both").tolist() == [2, 3, 7, 8]
    assert select_images(emo2, sem2, groups, 0.2, 0.8, "emo-a").tolist() == [2, 3, 4, 7, 8, 9]
    assert select_images(emo2, sem2, groups, 0.2, 0.8, "sem-c").tolist() == [1, 2, 3, 6, 7, 8]
    assert select_images(emo2, sem2, groups, 0.2, 0.8, "all").tolist() == list(range(10))
    for eta, delta in ((0.8, 0.2), (0.5, 0.5)):  # an empty window selects nothing: refused, not silently empty
        with pytest.raises(ConfigError, match="η < δ"):
            select_images(emo, sem, groups, eta, delta)
    with pytest.raises(ConfigError, match="unknown selection"):
        select_images(emo, sem, groups, 0.2, 0.8, "best")


def test_rho_mix_makes_the_generated_share_rho():
    # 80 real images, ρ = 0.2: n / (80 + n) = 0.2 → n = 20
    assert mix_count(80, 0.2) == 20
    assert mix_count(300, 0.25) == 100
    assert mix_count(80, 0.0) == 0
    chosen = np.array([3, 7, 11])
    mixed = mix_in(chosen, 80, 0.2, seed=0)
    assert len(mixed) == 20 and set(mixed.tolist()) == {3, 7, 11}
    counts = np.bincount(mixed)[[3, 7, 11]]
    assert counts.max() - counts.min() <= 1  # cycled evenly, not drawn at random
    many = np.arange(100)
    assert len(set(mix_in(many, 80, 0.2).tolist())) == 20  # enough kept images: no repeats
    assert np.array_equal(mix_in(chosen, 80, 0.2, seed=0), mixed)  # deterministic
    with pytest.raises(ConfigError, match="rho"):
        mix_count(10, 1.0)
    assert mix_in(np.array([5]), 80, 0.2).tolist() == [5] * 20  # one kept image fills the share alone
    for nothing in (mix_in(np.array([], dtype=np.int64), 80, 0.2), mix_in(chosen, 80, 0.0)):
        assert nothing.shape == (0,) and nothing.dtype == np.int64  # indices, even when there are none
    # η = 0 keeps the top of the ranking (the whole group with δ = 1)
    assert select_images(np.arange(4.0), np.arange(4.0), np.zeros(4, int), 0.0, 1.0).tolist() == [0, 1, 2, 3]


def test_feedback_end_to_end(synth_dir, joint_run, tmp_path, capsys):
    out = tmp_path / "feedback"
    args = [
        "feedback",
        "--config",
        str(REPO / "configs" / "tiny-feedback.yaml"),
        f"data.root={synth_dir}",
        f"feedback.checkpoint={joint_run}",
        f"output_dir={out}",
        "feedback.images_per_emotion=5",
        "feedback.steps=2",
        "feedback.pairs=4",
        "feedback.variants=[both]",
        "optim.batch_size=16",
        "optim.max_steps=2",
        "save_every=1",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"baseline", "both"}
    # the selection written is Alg. 1 applied to the scores written
    scores = json.loads((out / "scores.json").read_text())
    classes = sorted({s["emotion"] for s in scores}, key=[s["emotion"] for s in scores].index)
    emo = np.array([s["emo_a_score"] for s in scores])
    sem = np.array([s["sem_c_score"] for s in scores])
    groups = np.array([classes.index(s["emotion"]) for s in scores])
    kept = select_images(emo, sem, groups, 0.2, 0.8, "both")
    assert report["variants"]["both"]["kept"] == len(kept) > 0
    extra = json.loads((out / "variants" / "both" / "extra_train.json").read_text())
    assert len(extra) == mix_count(320, 0.2) == report["variants"]["both"]["added"]
    kept_files = {str((out / scores[i]["file"]).resolve()): scores[i]["emotion"] for i in kept}
    assert all(kept_files[e["path"]] == e["emotion"] for e in extra)  # only kept images, with their target emotion
    # the continued run trained on them, from the joint checkpoint
    meta = json.loads((out / "variants" / "both" / "run" / "last" / "model.json").read_text())
    assert meta["extra_train"] == len(extra) and meta["init_from"] and meta["finished"]
    base_meta = json.loads((out / "variants" / "baseline" / "run" / "last" / "model.json").read_text())
    assert base_meta["extra_train"] == 0
    for row in (report["start"], *report["variants"].values()):
        gen = row["generation"]
        assert gen["num_images"] == 5 * 8 and gen["emo-a"]["n"] == 40
        assert 0 <= gen["emo-a"]["value"] <= 1 and 0 < gen["sem-c"]["value"] <= 1 and gen["sem-d"]["value"] > 0
        assert "lpips" not in gen  # skipped in the built-in config (no AlexNet weights here)
    table = (out / "report.md").read_text()
    both = report["variants"]["both"]
    assert f"| both | {both['kept']} | {both['added']} | {both['accuracy']:.2%} |" in table
    # a second run reuses every finished stage
    stamp = (out / "variants" / "both" / "run" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "variants" / "both" / "run" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "report.json").read_text())["variants"]["both"]["kept"] == both["kept"]
    # damaged stage files (a kill mid-write) are redone, not trusted
    (out / scores[0]["file"]).write_bytes(b"not a png")
    (out / "variants" / "both" / "run" / "summary.json").write_text('{"accuracy_af')
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["variants"]["both"]["accuracy"] == both["accuracy"] and again["start"] == report["start"]
    # other settings never reuse a run made with these
    assert main([*args, "feedback.eta=0.0"]) == 2
    assert "was trained with other feedback or joint settings" in capsys.readouterr().err


def test_feedback_config_errors(synth_dir, joint_run, tmp_path, capsys):
    base = ["feedback", "--config", "tiny-feedback", f"data.root={synth_dir}", f"output_dir={tmp_path / 'f'}"]
    assert main(base) == 2
    assert "feedback.checkpoint is required" in capsys.readouterr().err
    assert main([*base, f"feedback.checkpoint={joint_run}", "feedback.eta=0.9", "feedback.delta=0.5"]) == 2
    assert "η < δ" in capsys.readouterr().err
    assert main([*base, f"feedback.checkpoint={joint_run}", "feedback.variants=[best]"]) == 2
    assert "feedback.variants" in capsys.readouterr().err
    assert main(["train", "joint", "--config", "tiny-feedback"]) == 2
    assert "use it with `uniemo feedback`" in capsys.readouterr().err
    assert main([*base, "feedback.checkpoint=/nonexistent/run"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_the_baseline_continuation_keeps_what_the_joint_run_learned(synth_dir, joint_run, tmp_path):
    """Alg. 1's baseline continues a finished joint run on the same images. The run it continues has annealed its
    learning rate to 0; continued at that run's peak (the previous tiny-feedback setting), the demo's checkpoint
    lost 0.8–1.8 points of test accuracy and 1.5–5.4 points of Emo-A (judge) in 25 steps. With tiny-feedback's
    continuation the mappers' condition c for each emotion stays within a few percent of the finished run's."""
    import torch

    from uniemo.config import FeedbackRunConfig, JointRunConfig
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.train.joint import train_joint

    parent = UniEmoModel.from_pretrained(joint_run)
    emotions = torch.arange(parent.space_cls_mean.shape[0])  # each emotion, at its mean features
    feats = {n: getattr(parent, f"space_{n}_mean") for n in ("cls", "scene", "object")}
    c0 = parent.condition(feats, emotions).detach()

    def drift(name: str, *extra: str) -> float:
        overrides = [f"data.root={synth_dir}", f"output_dir={tmp_path / name}", "optim.max_steps=6"]
        overrides += ["optim.batch_size=16", "joint.diagnostic_images=0", *extra]
        cfg = load_config(REPO / "configs" / "tiny-feedback.yaml", overrides, FeedbackRunConfig)
        joint = JointRunConfig(**{k: v for k, v in vars(cfg).items() if k != "feedback"})
        joint.joint.init_from = str(joint_run)
        train_joint(joint, progress=False)
        c = UniEmoModel.from_pretrained(tmp_path / name).condition(feats, emotions).detach()
        return float((c - c0).norm(dim=1).mean() / c0.norm(dim=1).mean())

    assert drift("continued") < 0.1
    assert drift("at-the-peak", "optim.lr=5e-4", "joint.mapper_lr=1e-3") > 0.2  # the control: the old setting


def test_each_variant_is_compared_with_the_baseline_within_its_interval():
    from uniemo.train.feedback import difference_lines, feedback_differences

    def row(accuracy, emo_a, n=400):
        return {"accuracy": accuracy, "generation": {"emo-a": {"value": emo_a, "n": n}}}

    report = {"start": row(0.62, 0.72), "variants": {"baseline": row(0.60, 0.70), "both": row(0.50, 0.68)}}
    report["test_images"] = 1000
    (both,) = feedback_differences(report)
    assert both["variant"] == "both" and both["control"] == "baseline"
    half = 1.96 * (0.6 * 0.4 / 1000 + 0.5 * 0.5 / 1000) ** 0.5  # 0.0434: two independent proportions
    assert both["accuracy"]["difference"] == pytest.approx(-0.10)
    assert both["accuracy"]["interval"] == pytest.approx([-0.10 - half, -0.10 + half]) and both["accuracy"]["resolved"]
    assert both["emo-a"]["difference"] == pytest.approx(-0.02) and not both["emo-a"]["resolved"]
    (line,) = difference_lines(report)
    assert "accuracy -10.0 points [-14.3, -5.7] (resolved)" in line and "not resolvable at N = 400 / 400" in line
    del report["variants"]["baseline"]  # without a baseline, the start is the control
    assert feedback_differences(report)[0]["control"] == "start"


def test_a_continued_run_keeps_the_objective_of_the_run_it_continues(synth_dir, trained_run, tmp_path):
    """Alg. 1 trains the same model on the same objective: a joint run trained with the paper's L_cond and weights
    is continued with them, whatever the feedback config's joint section says; how it continues (the learning
    rates, the resolution) comes from the feedback config."""
    from tests.conftest import joint_overrides
    from uniemo.config import FeedbackRunConfig, JointRunConfig
    from uniemo.train.feedback import _joint_config
    from uniemo.train.joint import train_joint

    parent = tmp_path / "paper"
    paper = ["joint.condition_loss=supcon", "joint.diffusion_weight=0.4", "loss.ce_weight=0.7", "joint.alpha=hard"]
    overrides = joint_overrides(synth_dir, trained_run, parent, steps=2) + paper
    train_joint(load_config(REPO / "configs" / "tiny-joint.yaml", overrides, JointRunConfig), progress=False)
    feedback = load_config(
        REPO / "configs" / "tiny-feedback.yaml",
        [f"data.root={synth_dir}", f"feedback.checkpoint={parent}", f"output_dir={tmp_path / 'fb'}"],
        FeedbackRunConfig,
    )
    assert feedback.joint.condition_loss == "none" and feedback.loss.ce_weight == 0.5  # what it would have used
    continued = _joint_config(feedback, tmp_path / "fb" / "run", None, 32)
    j = continued.joint
    assert (j.condition_loss, j.diffusion_weight, j.alpha, continued.loss.ce_weight) == ("supcon", 0.4, "hard", 0.7)
    assert feedback.joint.space_filter == "none" and j.space_filter == "agreeing"  # the parent's emotion space
    assert j.mapper_lr == feedback.joint.mapper_lr and continued.optim.lr == feedback.optim.lr
    assert j.init_from == str(parent)
