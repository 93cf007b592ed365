"""Explicit feedback, paper Alg. 1 (METHOD §6): generate, score, filter, mix into training, continue, compare.

Read top to bottom: the finished joint run → the Emo-A classifier (given, or trained on CLIP features) and the
evaluation suite → m images per emotion (``generated/``) → their Emo-A and Sem-C scores → for each variant a
selection (rank in [η·m, δ·m) per emotion, on both scores or one), mixed in at ρ → a continued joint run
(``variants/<name>/run``) → the same m images per emotion regenerated from it → accuracy and generation metrics
of every variant (and of the baseline, continued without generated images) in ``report.json`` / ``report.md``.

Every stage is kept on disk and reused when the command is run again (an interrupted continued run resumes).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from uniemo.checkpoint import CONFIG_FILE, JOINT_KIND, read_meta, resolve_checkpoint, write_atomic
from uniemo.config import FeedbackRunConfig, JointRunConfig, config_to_dict, load_config, save_config
from uniemo.data.datasets import open_dataset
from uniemo.data.images import load_image
from uniemo.errors import ConfigError, DataError
from uniemo.metrics import generation as gm
from uniemo.metrics.judge import difference_interval
from uniemo.metrics.networks import EmotionFeatureClassifier, train_emotion_classifier
from uniemo.metrics.suite import GenerationEvaluator, GenerationMetricsConfig, format_report
from uniemo.pipelines.generation import UniEmoPipeline
from uniemo.train.joint import train_joint
from uniemo.train.loop import require

logger = logging.getLogger(__name__)

VARIANTS = ("both", "emo-a", "sem-c", "all")
BASELINE = "baseline"


# --------------------------------------------------------------------------------------------------------------
# Alg. 1's selection and the ρ mix (pure)


def rank_window(scores: np.ndarray, eta: float, delta: float) -> np.ndarray:
    """Boolean mask of the items whose rank in descending ``scores`` lies in [η·m, δ·m) (ties: earlier first).

    >>> rank_window(np.array([0.9, 0.1, 0.5, 0.7, 0.3]), 0.2, 0.8).tolist()   # ranks 0, 4, 2, 1, 3
    [False, False, True, True, True]
    """
    m = len(scores)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    return (rank >= math.ceil(eta * m - 1e-9)) & (rank < math.ceil(delta * m - 1e-9))


def select_images(
    emo_scores: np.ndarray,
    sem_scores: np.ndarray,
    groups: np.ndarray,
    eta: float,
    delta: float,
    criteria: str = "both",
) -> np.ndarray:
    """Indices of the images Alg. 1 keeps: ranked within each group (target emotion) on the Emo-A score, the
    Sem-C score or both (the intersection); ``all`` keeps every image.

    Raises:
        ConfigError: bad thresholds or an unknown criterion.
    """
    if not 0 <= eta < delta <= 1:
        raise ConfigError(f"the thresholds must satisfy 0 ≤ η < δ ≤ 1, got η={eta}, δ={delta}")
    if criteria not in VARIANTS:
        raise ConfigError(f"unknown selection '{criteria}'; choose from {', '.join(VARIANTS)}")
    keep = np.zeros(len(groups), dtype=bool)
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        emo = rank_window(emo_scores[idx], eta, delta)
        sem = rank_window(sem_scores[idx], eta, delta)
        keep[idx] = {"both": emo & sem, "emo-a": emo, "sem-c": sem, "all": np.ones(len(idx), bool)}[criteria]
    return np.flatnonzero(keep)


def mix_count(num_real: int, rho: float) -> int:
    """How many generated images make up the share ρ of a training set with ``num_real`` real images."""
    if not 0 <= rho < 1:
        raise ConfigError(f"rho must lie in [0, 1), got {rho}")
    return round(rho / (1 - rho) * num_real)


def mix_in(selected: np.ndarray, num_real: int, rho: float, seed: int = 0) -> np.ndarray:
    """The generated images to add (indices into the selection's source, repeats allowed): ``mix_count`` of them,
    the selection shuffled once (fixed seed) and cycled through when it is smaller than that."""
    need = mix_count(num_real, rho)
    if need == 0 or len(selected) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(np.asarray(selected, dtype=np.int64))
    return np.resize(order, need)


# --------------------------------------------------------------------------------------------------------------
# The command


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or was cut short (then its stage is redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _generate_all(
    pipe: Any, model_dir: Path, classes: list[str], m: int, out: Path, settings: dict[str, Any]
) -> dict[str, list]:
    """m images per emotion into ``out/<emotion>/NNN.png`` (image i of every emotion uses seed ``seed + i``);
    reuses a folder that already holds the m images of the same model and settings (its ``done.json``)."""
    weights = resolve_checkpoint(model_dir) / "model.safetensors"
    source = {"model": str(weights), "mtime": weights.stat().st_mtime_ns if weights.is_file() else None}
    images: dict[str, list] = {}
    for emotion in tqdm(classes, desc=f"generate {out.name}", leave=False):
        folder = out / emotion
        done = folder / "done.json"
        if _read_json(done) == {"m": m, **source, **settings}:
            try:
                images[emotion] = [load_image(folder / f"{i:04d}.png") for i in range(m)]
                continue
            except DataError as err:  # a damaged file: generate the folder again
                logger.warning("%s; generating %s again", err, folder)
        folder.mkdir(parents=True, exist_ok=True)
        generated = pipe(emotion, num_images=m, **settings).images
        for i, image in enumerate(generated):
            image.save(folder / f"{i:04d}.png")
        write_atomic(done, json.dumps({"m": m, **source, **settings}))
        images[emotion] = generated
    return images


#: the settings of L_Joint, and of the emotion space it ends with, a continued run takes from the run it continues:
#: Alg. 1 trains the same model on the same objective, and the feedback config's own ``joint`` section says only how
#: the training continues.
OBJECTIVE_KEYS = (
    "template",
    "alpha",
    "condition_loss",
    "condition_temperature",
    "understanding_weight",
    "condition_weight",
    "diffusion_weight",
    "content_prompt",
    "space_filter",
)


def _joint_config(cfg: FeedbackRunConfig, run_dir: Path, extra: Path | None, resolution: int) -> JointRunConfig:
    """The continued joint run of one variant: the objective of the run it continues (its ``config.yaml``: the
    :data:`OBJECTIVE_KEYS` and the ``loss`` section), the feedback config's own settings for the rest."""
    joint = JointRunConfig(**{k: v for k, v in vars(copy.deepcopy(cfg)).items() if k != "feedback"})
    trained_with = resolve_checkpoint(cfg.feedback.checkpoint) / CONFIG_FILE
    if trained_with.is_file():
        trained = load_config(trained_with, cls=JointRunConfig)
        for key in OBJECTIVE_KEYS:
            setattr(joint.joint, key, getattr(trained.joint, key))
        joint.loss = trained.loss
    else:
        logger.warning("%s keeps no run config: the continued runs use the feedback config's objective", trained_with)
    joint.output_dir = str(run_dir)
    joint.joint.init_from = cfg.feedback.checkpoint
    joint.joint.extra_train = str(extra) if extra else None
    joint.joint.resolution = resolution
    return joint


def check_feedback_config(cfg: FeedbackRunConfig) -> None:
    """Refuses settings Alg. 1 cannot run with, before any work.

    Raises:
        ConfigError: a required key unset, unknown variants, Emo-A or Sem-C skipped, m < 2, or η, δ, ρ out of range.
    """
    f = cfg.feedback
    require(
        {
            "output_dir": (cfg.output_dir, "runs/feedback"),
            "data.root": (cfg.data.root, "/data/EmoSet-118K"),
            "feedback.checkpoint": (f.checkpoint, "runs/joint"),
            "feedback.clip": (f.clip, "openai/clip-vit-large-patch14"),
        }
    )
    unknown = [v for v in f.variants if v not in VARIANTS]
    if unknown or not f.variants:
        raise ConfigError(f"feedback.variants must list some of {', '.join(VARIANTS)}, got {f.variants}")
    if {"emo-a", "sem-c"} & set(f.metrics_skip):
        raise ConfigError("Alg. 1 ranks by Emo-A and Sem-C: do not list them in feedback.metrics_skip")
    if f.images_per_emotion < 2:
        raise ConfigError("feedback.images_per_emotion must be at least 2")
    select_images(np.zeros(1), np.zeros(1), np.zeros(1), f.eta, f.delta)  # checks η, δ
    mix_count(1, f.rho)


def run_feedback(cfg: FeedbackRunConfig, progress: bool = True) -> dict[str, Any]:
    """Runs Alg. 1 as configured; returns (and writes to ``output_dir/report.json``) the comparison.

    Raises:
        ConfigError / DataError / CheckpointError / MetricNetworkError: bad settings, data, checkpoint or network.
    """
    check_feedback_config(cfg)
    f = cfg.feedback
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start_dir = resolve_checkpoint(f.checkpoint)
    meta = read_meta(start_dir, JOINT_KIND)
    if not meta.get("finished"):
        raise ConfigError(f"{start_dir} is an unfinished joint run: finish it with `uniemo train joint … --resume`")
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.fold)
    classes = list(dataset.classes)
    if classes != list(meta["classes"]):
        raise ConfigError(f"the dataset's classes ({', '.join(classes)}) differ from {start_dir}'s")
    num_real = len(dataset.split(cfg.data.train_split)[: cfg.data.max_train_samples])
    suite, emo_clf = _evaluation_suite(cfg, dataset, out)
    settings = {"steps": f.steps, "guidance": f.guidance, "scheduler": f.scheduler, "seed": cfg.seed}

    # ---- generate m per emotion with the joint model and score them -----------------------------------------
    pipe = UniEmoPipeline.from_pretrained(start_dir)
    images = _generate_all(pipe, start_dir, classes, f.images_per_emotion, out / "generated", settings)
    del pipe
    scored = _score(images, classes, suite, emo_clf, out)
    report: dict[str, Any] = {
        "checkpoint": str(start_dir),
        "dataset": str(dataset.root),
        "m": f.images_per_emotion,
        "eta": f.eta,
        "delta": f.delta,
        "rho": f.rho,
        "continued_steps": cfg.optim.max_steps,
        "test_images": len(dataset.split(cfg.data.test_split)),
        "start": {"accuracy": meta.get("accuracy_after"), "generation": suite.evaluate(images, scored["embeds"])},
        "variants": {},
    }

    # ---- each variant: select, mix, continue training, regenerate, evaluate -----------------------------------
    resolution = int(meta.get("resolution", cfg.joint.resolution))
    for name in ([BASELINE] if f.baseline else []) + list(dict.fromkeys(f.variants)):
        variant = _run_variant(cfg, name, out, scored, num_real, resolution, progress)
        run_dir = variant.pop("run_dir")
        pipe = UniEmoPipeline.from_pretrained(run_dir)
        generated = out / "variants" / name / "generated"
        after = _generate_all(pipe, run_dir, classes, f.images_per_emotion, generated, settings)
        del pipe
        report["variants"][name] = {**variant, "generation": suite.evaluate(after)}
        logger.info("variant %s:\n%s", name, format_report(report["variants"][name]["generation"]))
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    write_atomic(out / "report.md", format_feedback_report(report))
    return report


def _evaluation_suite(cfg: FeedbackRunConfig, dataset: Any, out: Path) -> tuple[Any, Any]:
    """The evaluation suite (Emo-A, Sem-C, Sem-D, FID, LPIPS) and the Emo-A classifier (trained on ``feedback.clip``'s
    image embeddings of the training split when ``feedback.emo_classifier`` is not given)."""
    f = cfg.feedback
    clf_dir = Path(f.emo_classifier) if f.emo_classifier else out / "emo-classifier"
    if not f.emo_classifier and not (clf_dir / "model.json").is_file():
        logger.info("training the Emo-A classifier on %s's CLIP image embeddings", f.clip)
        train_emotion_classifier(dataset.root, f.clip, clf_dir, data_format=cfg.data.format, seed=cfg.seed)
    metrics_cfg = GenerationMetricsConfig(
        emo_classifier=str(clf_dir),
        clip=f.clip,
        fid_network=f.fid_network,
        sem_classes=f.sem_classes,
        pairs=f.pairs,
        seed=cfg.seed,
        split=cfg.data.test_split,
        skip=tuple(f.metrics_skip),
    )
    return GenerationEvaluator(metrics_cfg, dataset), EmotionFeatureClassifier.from_pretrained(clf_dir)


def _score(images: dict[str, list], classes: list[str], suite: Any, emo_clf: Any, out: Path) -> dict[str, Any]:
    """Each generated image's Emo-A score (the classifier's probability of its target emotion) and Sem-C score
    (``scores.json``); returns them with the images' emotion indices, CLIP embeddings and file records."""
    flat = [(e, i) for e in classes for i in range(len(images[e]))]
    groups = np.array([classes.index(e) for e, _ in flat])
    embeds = suite.clip.embed_images([images[e][i] for e, i in flat])
    emo_scores = gm.target_probabilities(emo_clf.probabilities(embeds).numpy(), groups)
    sem_scores = suite.sem_c_scores(embeds)
    scores = [
        {"file": f"generated/{e}/{i:04d}.png", "emotion": e, "emo_a_score": float(a), "sem_c_score": float(b)}
        for (e, i), a, b in zip(flat, emo_scores, sem_scores)
    ]
    write_atomic(out / "scores.json", json.dumps(scores, indent=1))
    return {"groups": groups, "embeds": embeds, "emo": emo_scores, "sem": sem_scores, "records": scores}


def _run_variant(
    cfg: FeedbackRunConfig,
    name: str,
    out: Path,
    scored: dict[str, Any],
    num_real: int,
    resolution: int,
    progress: bool,
) -> dict[str, Any]:
    """One variant of Alg. 1: select the generated images (none for the baseline), mix ρ·N of them into the
    training set, continue joint training (resumed if it was interrupted); returns its counts, accuracy and run
    directory (``run_dir``).

    Raises:
        DataError: the selection keeps no image.
        ConfigError: the variant's folder was trained with other settings.
    """
    f = cfg.feedback
    folder = out / "variants" / name
    folder.mkdir(parents=True, exist_ok=True)
    extra_file = None
    kept = 0
    added = 0
    if name != BASELINE:
        chosen = select_images(scored["emo"], scored["sem"], scored["groups"], f.eta, f.delta, name)
        kept = len(chosen)
        if kept == 0:
            total = len(scored["records"])
            raise DataError(f"variant '{name}' keeps no generated image (η={f.eta}, δ={f.delta}, m={total})")
        mixed = mix_in(chosen, num_real, f.rho, cfg.seed)
        added = len(mixed)
        records = scored["records"]
        entries = [
            {"path": str((out / records[i]["file"]).resolve()), "emotion": records[i]["emotion"]} for i in mixed
        ]
        extra_file = folder / "extra_train.json"
        write_atomic(extra_file, json.dumps(entries, indent=1))
    run_dir = folder / "run"
    joint_cfg = _joint_config(cfg, run_dir, extra_file, resolution)
    # what this variant's run is made of: another selection or other joint settings must not reuse it
    made_of = json.dumps({"config": config_to_dict(joint_cfg), "extra": _read_json(extra_file) if extra_file else []})
    recorded = folder / "run-settings.json"
    if run_dir.exists() and recorded.is_file() and recorded.read_text() != made_of:
        raise ConfigError(
            f"{run_dir} was trained with other feedback or joint settings; choose another output_dir or delete "
            f"{folder}"
        )
    write_atomic(recorded, made_of)
    summary = _read_json(run_dir / "summary.json")  # a run killed before it wrote this is resumed
    if summary is None:
        resume = (run_dir / "last" / "training_state.json").is_file()
        logger.info("variant %s: continuing joint training for %d steps", name, cfg.optim.max_steps)
        train_joint(joint_cfg, resume=resume, progress=progress)
        summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "kept": kept,
        "added": added,
        "train_images": num_real + added,
        "accuracy": summary["accuracy_after"],
        "run_dir": run_dir,
    }


def feedback_differences(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant's test accuracy and Emo-A against the baseline's (the start's without one): the difference, its
    95 % interval (unpaired: conservative) and whether the interval decides it (excludes 0)."""
    control_name = BASELINE if BASELINE in report["variants"] else "start"
    control = report["variants"].get(BASELINE, report["start"])
    n_test = report.get("test_images")
    out = []
    for name, variant in report["variants"].items():
        if name == control_name:
            continue
        row: dict[str, Any] = {"variant": name, "control": control_name}
        figures = {
            "accuracy": (variant.get("accuracy"), control.get("accuracy"), n_test, n_test),
            "emo-a": (
                variant["generation"].get("emo-a", {}).get("value"),
                control["generation"].get("emo-a", {}).get("value"),
                variant["generation"].get("emo-a", {}).get("n"),
                control["generation"].get("emo-a", {}).get("n"),
            ),
        }
        for figure, (p1, p2, n1, n2) in figures.items():
            if None in (p1, p2, n1, n2):
                continue
            low, high = difference_interval(p1, n1, p2, n2)
            row[figure] = {
                "difference": p1 - p2,
                "interval": [low, high],
                "n": [n1, n2],
                "resolved": low > 0 or high < 0,
            }
        out.append(row)
    return out


def difference_lines(report: dict[str, Any]) -> list[str]:
    """:func:`feedback_differences` in words, one line per variant."""
    lines = []
    for row in feedback_differences(report):
        parts = []
        for figure in ("accuracy", "emo-a"):
            if figure in row:
                d = row[figure]
                low, high = (100 * x for x in d["interval"])
                verdict = "resolved" if d["resolved"] else "not resolvable at N = " + " / ".join(map(str, d["n"]))
                parts.append(f"{figure} {100 * d['difference']:+.1f} points [{low:+.1f}, {high:+.1f}] ({verdict})")
        lines.append(f"{row['variant']} against the {row['control']}: " + "; ".join(parts))
    return lines


def format_feedback_report(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (paper Table VI's columns)."""

    def cell(gen: dict[str, Any], key: str, fmt: str) -> str:
        value = gen.get(key, {}).get("value")
        return "n/a" if value is None else format(value, fmt)

    lines = [
        f"# Explicit feedback (Alg. 1): m = {report['m']} per emotion, η = {report['eta']}, δ = {report['delta']}, "
        f"ρ = {report['rho']}, {report['continued_steps']} continued steps",
        "",
        "| variant | kept | added | accuracy | FID | LPIPS | Emo-A | Sem-C | Sem-D |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("start (joint run)", {"kept": "", "added": "", **report["start"]})]
    rows += [(name, v) for name, v in report["variants"].items()]
    for name, v in rows:
        gen = v["generation"]
        acc = v.get("accuracy")
        lines.append(
            f"| {name} | {v['kept']} | {v['added']} | {'n/a' if acc is None else format(acc, '.2%')} | "
            f"{cell(gen, 'fid', '.2f')} | {cell(gen, 'lpips', '.4f')} | {cell(gen, 'emo-a', '.2%')} | "
            f"{cell(gen, 'sem-c', '.4f')} | {cell(gen, 'sem-d', '.4f')} |"
        )
    start = report["start"]["generation"]
    differences = difference_lines(report)
    if differences:
        lines += [
            "",
            "Differences, with their 95 % intervals (unpaired, so conservative for the same test images):",
            "",
        ]
        lines += [f"- {line}" for line in differences]
    tested = f"; accuracy on {report['test_images']} test images" if report.get("test_images") else ""
    lines += ["", f"N: {start['num_images']} generated images per row{tested}; networks:"]
    lines += [f"- {k}: {v}" for k, v in start["networks"].items()]
    return "\n".join(lines) + "\n"
