"""The demo's ``report.html``: one self-contained page (images inlined) built from the files the stages wrote.

Every number on the page is read from a stage's own output (``evaluation/report.json``, ``joint/summary.json``,
``joint-control/comparison.json``, ``generation/metrics.json``, ``feedback/report.json``, the runs'
``metrics.jsonl``), never typed in again.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from uniemo.checkpoint import write_atomic
from uniemo.evaluate import comparison_words
from uniemo.plotting import pyplot, save_figure
from uniemo.train.feedback import difference_lines

#: The page's sections, in order (their HTML ids; the tests check each is there).
SECTIONS = (
    "summary",
    "judge",
    "generation-metrics",
    "emotions",
    "transfer",
    "fusion",
    "reference",
    "oracle",
    "understanding",
    "curves",
    "attention",
    "feedback",
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:.92em}.big{font-size:1.25em}
.warn{background:#fff6e0;border:1px solid #f0d48a;padding:.5em .8em;border-radius:4px}
"""


def _img(path: Path, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI (the page opens from disk, alone)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(out: Path) -> Path:
    """Training curves of both stages from their ``metrics.jsonl``: losses per step and stage 1's val accuracy."""
    plt = pyplot()
    stage1 = _read_jsonl(out / "understanding" / "metrics.jsonl")
    joint = _read_jsonl(out / "joint" / "metrics.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=110)
    for key, label in (("loss/total", "total"), ("loss/ce", "L_CE"), ("loss/scene", "L_S"), ("loss/object", "L_O")):
        points = [(r["step"], r[key]) for r in stage1 if key in r]
        if points:
            axes[0].plot(*zip(*points), label=label)
    axes[0].set_title("stage 1: training losses")
    val = [(r["step"], r["val/accuracy"]) for r in stage1 if "val/accuracy" in r]
    if val:
        axes[1].plot(*zip(*val), marker="o")
    axes[1].set_title("stage 1: validation accuracy")
    for key, label in (
        ("loss/total", "L_Joint"),
        ("loss/understanding", "L_U"),
        ("loss/cond", "L_cond"),
        ("loss/diffusion", "L(θ)"),
    ):
        points = [(r["step"], r[key]) for r in joint if key in r]
        if points:
            axes[2].plot(*zip(*points), label=label)
    axes[2].set_title("stage 2: joint losses")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return save_figure(fig, out / "report-curves.png")


def write_report(out: Path, mode: str) -> Path:
    """Writes ``out/report.html`` from the stages' outputs and returns its path."""
    evaluation = json.loads((out / "evaluation" / "report.json").read_text())
    joint = json.loads((out / "joint" / "summary.json").read_text())
    joint["control"] = json.loads((out / "joint-control" / "comparison.json").read_text())
    generation = json.loads((out / "generation" / "metrics.json").read_text())
    feedback = json.loads((out / "feedback" / "report.json").read_text())
    attention = json.loads((out / "attention" / "attention.json").read_text())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>uniemo demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>uniemo demo report</h1>",
        f"<p class=note>Mode: {html.escape(mode)}. Everything here was trained and measured on this machine, on the "
        "<b>built-in synthetic dataset</b> with the shipped <b>stand-in</b> CLIP and Stable Diffusion — not on EmoSet "
        "and not with SD 1.5: the numbers show that each mechanism works, not how well UniEmo does on photographs."
        "</p>",
        _summary_html(evaluation, joint, generation),
        '<h2 id="judge">Did the emotion reach the images? Four modes, read by the attribute judge</h2>',
        _judge_html(generation),
        _metrics_html(generation),
        _images_html(out / "generation"),
        _understanding_html(out, evaluation),
        _attention_html(out / "attention", attention),
        '<h2 id="feedback">Explicit feedback (Alg. 1)</h2>',
        _feedback_html(feedback),
        "</body></html>",
    ]
    path = out / "report.html"
    write_atomic(path, "\n".join(parts))
    return path


def _summary_html(evaluation: dict[str, Any], joint: dict[str, Any], generation: dict[str, Any]) -> str:
    emo = generation["emo-a"]
    n = evaluation["num_samples"]
    control = joint["control"]
    rows = [
        ["understanding: test accuracy", _pct(evaluation["accuracy"]), n],
        ["understanding: 2-class accuracy", _pct(evaluation["sentiment_accuracy"]), n],
        ["before joint training (test)", _pct(joint["accuracy_before"]), ""],
        [f"after {joint['steps']} joint steps (test)", _pct(joint["accuracy_after"]), ""],
        [f"control: {joint['steps']} steps of L_U alone (test)", _pct(control["control_accuracy"]), control["n"]],
        ["joint − control, paired by image [95 %]", comparison_words(control), control["n"]],
        ["generation: Emo-A (head on CLIP features)", _pct(emo["value"]), emo["n"]],
    ]
    chance = 1 / len(evaluation["classes"])
    return '<h2 id="summary">Summary</h2>' + _headline(generation, chance) + _table(["what", "value", "N"], rows)


def _metrics_html(generation: dict[str, Any]) -> str:
    emo, sem_c = generation["emo-a"], generation["sem-c"]
    skipped = "; ".join(f"{k} ({html.escape(v)})" for k, v in generation.get("skipped", {}).items())
    per_emotion = [
        [e, _pct(emo["per_emotion"][e]), f"{sem_c['per_emotion'][e]:.3f}", n]
        for e, n in generation["per_emotion_n"].items()
    ]
    return (
        '<h2 id="generation-metrics">Generation metrics</h2>'
        + _table(["metric", "value", "N", "network"], _metric_rows(generation))
        + f"<p class=note>Not computed: {skipped}. "
        f"Sampling: {html.escape(json.dumps(generation.get('sampling', {})))}.</p>"
        + _table(["emotion", "Emo-A", "Sem-C", "images"], per_emotion)
    )


def _images_html(gen_dir: Path) -> str:
    return "\n".join(
        [
            '<h2 id="emotions">Generated images, one row per target emotion</h2>',
            _img(gen_dir / "emotions.png", "generated images per emotion"),
            '<h2 id="transfer">Emotion transfer onto neutral content ("a house")</h2>',
            _img(gen_dir / "transfer-house.png", "emotion transfer"),
            '<h2 id="fusion">Emotion fusion: amusement and sadness at five weights</h2>',
            _img(gen_dir / "fusion.png", "emotion fusion"),
            '<h2 id="reference">From a reference image (left: the reference; right: generated from its feeling)</h2>',
            _img(gen_dir / "reference.png", "reference images and generated images"),
            '<h2 id="oracle">Oracle: the stand-in told each emotion\'s own palette, scene and object in words</h2>',
            _img(gen_dir / "oracle.png", "oracle images"),
        ]
    )


def _understanding_html(out: Path, evaluation: dict[str, Any]) -> str:
    per_class = [[c, _pct(a)] for c, a in evaluation["per_class_accuracy"].items()]
    return (
        '<h2 id="understanding">Understanding: accuracy and confusion matrix</h2>'
        + _table(["class", "accuracy (recall)"], per_class)
        # found in the run's own folder, not at the path recorded (relative to wherever the demo was started)
        + _img(out / "evaluation" / Path(evaluation["confusion_png"]).name, "confusion matrix")
        + '<h2 id="curves">Training curves</h2>'
        + _img(plot_curves(out), "training curves")
    )


def _attention_html(att_dir: Path, attention: list[dict[str, Any]]) -> str:
    return (
        '<h2 id="attention">Where the expert queries look</h2>'
        "<p class=note>The Interactive Blocks' attention of the scene queries (after L₁) and the object queries "
        "(after L₂) over the patches, averaged over the queries, for the first test image of each emotion "
        "(paper Fig. 9).</p>" + "".join(_img(att_dir / a["png"], f"attention {a['emotion']}") for a in attention)
    )


def _ci(result: dict[str, Any], value: str = "emo_a", interval: str = "interval") -> str:
    low, high = result[interval]
    return f"{result[value]:.1%} [{low:.1%}, {high:.1%}]"


def _headline(generation: dict[str, Any], chance: float) -> str:
    """The page's first line: Emo-A against chance, beside the judge's real-image ceiling and the oracle."""
    emo = generation["emo-a"]
    judge = generation.get("judge")
    head = f"Emo-A (head on CLIP features): <b>{_pct(emo['value'])}</b>"
    if emo.get("real_test") is not None:
        head += f" (that head on real test images: {_pct(emo['real_test'])})"
    if not judge:
        return f"<p class=big>{head}, chance {_pct(chance)}, N = {emo['n']} images.</p>"
    e = judge["emotions"]
    real = judge["real"]
    oracle = judge["oracle"]
    return (
        f"<p class=big>Emo-A of the generated images by the attribute judge: <b>{_ci(e)}</b> — chance "
        f"{_pct(chance)}, the judge on real test images {_pct(real['emotion'])}, the oracle {_pct(oracle['emo_a'])}; "
        f"2-class {_pct(e['valence'])}; N = {e['n']} images (95 % intervals). {head}.</p>"
    )


def _judge_html(generation: dict[str, Any]) -> str:
    judge = generation.get("judge")
    if not judge:
        return "<p class=note>No attribute judge in this run.</p>"
    e, t, f, r, o, real = (judge[k] for k in ("emotions", "transfer", "fusion", "reference", "oracle", "real"))
    rows = [
        ["real test images (the ceiling)", f"{real['emotion']:.1%}", f"{real['valence']:.1%}", real["n"]],
        ["oracle: captions of each emotion's own cues", _ci(o), _ci(o, "valence", "valence_interval"), o["n"]],
        ["one emotion (the placeholder alone)", _ci(e), _ci(e, "valence", "valence_interval"), e["n"]],
        [f'transfer onto "a {t["content"]}"', _ci(t), _ci(t, "valence", "valence_interval"), t["n"]],
        ["reference image (its true emotion)", _ci(r, "agreement"), f"{r['valence']:.1%}", r["n"]],
        [
            "control: the same images paired with the references at random",
            _pct(r.get("shuffled")),
            _pct(r.get("valence_shuffled")),
            r["n"],
        ],
    ]
    per = [[name, _pct(e["per_emotion"][name]), _pct(o["per_emotion"][name])] for name in e["per_emotion"]]
    fusion = [
        [f"{row['weight']:.2f}", _pct(row[f["first"]]), _pct(row[f["second"]]), _pct(row["positive"]), row["n"]]
        for row in f["rows"]
    ]
    monotonic = "falls monotonically" if f["monotonic"] else "does NOT fall monotonically"
    return (
        "<p class=note>The attribute judge is a small CNN trained on the real training images that reads the palette, "
        "the scene and the main object; the built-in dataset's own rule turns them into an emotion. The oracle is the "
        "best the stand-in can show: the same sampler, told each emotion's cues in words.</p>"
        + _table(["images", "Emo-A", "2-class", "N"], rows)
        + _table(["emotion", "Emo-A (placeholder)", "oracle"], per)
        + f"<p>Transfer: the judge sees a {t['content']} in {_ci(t, 'content_share', 'content_interval')} of the "
        f"images ({_pct(t.get('content_share_without'))} of the images generated without the prompt). "
        f"Fusion {f['first']} w + {f['second']} (1 − w): the share read as {f['first']} {monotonic}.</p>"
        + _table(["w", f"read as {f['first']}", f"read as {f['second']}", "read positive", "N"], fusion)
    )


def _metric_rows(report: dict[str, Any]) -> list[list[Any]]:
    nets = report.get("networks", {})
    rows = []
    emo = report["emo-a"]
    rows.append(["Emo-A", f"{emo['value']:.2%} (chance {emo['chance']:.1%})", emo["n"], nets.get("emo-a", "")])
    if "sem-c" in report:
        rows.append(["Sem-C", f"{report['sem-c']['value']:.4f}", report["sem-c"]["n"], nets.get("sem-c", "")])
    for key, name in (("sem-d", "Sem-D"), ("lpips", "LPIPS")):
        if key in report and report[key].get("value") is not None:
            r = report[key]
            spread = r["spread_over_emotions"]["std"]
            rows.append([name, f"{r['value']:.4f} ± {spread:.4f}", f"{r['n_pairs']} pairs", nets.get(key, "")])
    if "fid" in report:
        r = report["fid"]
        rows.append(["FID", f"{r['value']:.2f}", f"{r['n_generated']} vs {r['n_reference']}", nets.get("fid", "")])
    return rows


def _feedback_html(report: dict[str, Any]) -> str:
    rows = []
    for name, v in [("start (the joint run)", {**report["start"], "kept": "", "added": ""})] + list(
        report["variants"].items()
    ):
        gen = v["generation"]
        rows.append(
            [
                name,
                v["kept"],
                v["added"],
                _pct(v.get("accuracy")),
                _pct(gen["emo-a"]["value"]),
                f"{gen['sem-c']['value']:.3f}",
                f"{gen['sem-d']['value']:.3f}",
                f"{gen['fid']['value']:.2f}",
            ]
        )
    return (
        f"<p class=note>m = {report['m']} images per emotion from the joint run, ranked within their emotion by the "
        f"Emo-A score and the Sem-C score; kept where both ranks lie in [η·m, δ·m) with η = {report['eta']}, "
        f"δ = {report['delta']}; mixed into the training set as the share ρ = {report['rho']}; then "
        f"{report['continued_steps']} more joint steps. The baseline continues as long without generated images. "
        f"Generation metrics on m images per emotion regenerated from each run.</p>"
        + _table(["variant", "kept", "added", "accuracy", "Emo-A", "Sem-C", "Sem-D", "FID (CLIP)"], rows)
        + f"<p class=note>N: {report['start']['generation']['emo-a']['n']} generated images per row for Emo-A"
        + (f", {report['test_images']} test images for the accuracy" if report.get("test_images") else "")
        + ". Differences with their 95 % intervals (unpaired, so conservative for the same test images): "
        + "; ".join(html.escape(line) for line in difference_lines(report))
        + ".</p>"
    )
