"""Checkpoints shared by hub id, the Hugging Face way: downloaded into (and read offline from) the hub cache by
``huggingface_hub``, and published with a model card generated from the checkpoint.

>>> clf = EmotionClassifier.from_pretrained("org/uniemo-emoset-vitb32")                 # doctest: +SKIP
>>> push_to_hub("runs/joint", "org/uniemo-emoset-sd15", evaluations=["gen/report.json"])  # doctest: +SKIP

A repository holds one checkpoint directory at its root: ``model.json``, ``model.safetensors``, ``config.yaml``
(the run's resolved config), ``README.md`` (the card) and, for a joint checkpoint saved with its diffusion model,
``diffusion/``. The card's front matter carries a ``uniemo`` block (what it was trained on, how, what was measured
with its N, the sampling defaults) that :func:`read_card` gives back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from uniemo import __version__
from uniemo.checkpoint import CONFIG_FILE, JOINT_KIND, META_FILE, MODEL_FILE, SAVED_DIFFUSION, resolve_checkpoint
from uniemo.errors import CheckpointError
from uniemo.models.factory import STANDIN

CARD_FILE = "README.md"
#: the run config's entries that are paths on the training machine: left out of a card.
_MACHINE_KEYS = {"root", "output_dir", "understanding", "feature_cache", "init_from", "checkpoint"}


# --------------------------------------------------------------------------------------------------------------
# The model card


def card_metrics(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of a report of ``uniemo evaluate understanding`` or ``evaluate generation`` (its ``--out``
    JSON), each with its N: ``{"name", "value", "n", …}``.

    Raises:
        CheckpointError: a report of neither kind.
    """
    if "accuracy" in report and "num_samples" in report:
        where = {"n": report["num_samples"], "dataset": Path(str(report.get("dataset", ""))).name}
        out = [{"name": "accuracy", "value": report["accuracy"], **where, "split": report.get("split")}]
        if report.get("sentiment_accuracy") is not None:
            out.append({"name": "2-class accuracy", "value": report["sentiment_accuracy"], **where})
        return out
    figures = [(name, report[name]) for name in ("emo-a", "sem-c", "sem-d", "fid", "lpips") if name in report]
    if not figures:
        raise CheckpointError("not a report of `uniemo evaluate understanding` or `uniemo evaluate generation`")
    out = []
    for name, figure in figures:
        entry = {"name": name, "value": figure.get("value"), "n": figure.get("n", figure.get("n_pairs"))}
        if name == "fid" and "network" in figure:
            entry["network"] = figure["network"]
        out.append(entry)
        if name == "emo-a" and figure.get("two_class") is not None:
            out.append({"name": "emo-a 2-class", "value": figure["two_class"], "n": entry["n"]})
    return out


def _settings(config_yaml: str | None) -> dict[str, Any]:
    """The run config's settings without the training machine's paths."""
    config = yaml.safe_load(config_yaml) if config_yaml else None
    if not isinstance(config, dict):
        return {}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _MACHINE_KEYS}
        return value

    return clean(config)


def card_data(directory: Path, evaluations: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The ``uniemo`` block of a checkpoint's card: kind, classes, data, training settings, metrics, sampling."""
    meta = json.loads((directory / META_FILE).read_text())
    config_file = directory / CONFIG_FILE
    settings = _settings(config_file.read_text() if config_file.is_file() else None)
    extra = meta.get("extra") or {}
    dataset = extra.get("dataset") or {}
    if not isinstance(dataset, dict):  # a joint checkpoint stores the dataset's root alone
        dataset = {"root": dataset}
    counts = dataset.get("train_counts") or {}
    metrics = [m for report in evaluations for m in card_metrics(report)]
    if meta.get("val_accuracy") is not None:
        metrics.append({"name": "validation accuracy (model selection)", "value": meta["val_accuracy"]})
    for key, name in (("accuracy_before", "test accuracy before joint training"), ("accuracy_after", "test accuracy")):
        if meta.get(key) is not None:  # a joint checkpoint's understanding model, on the run's test split
            metrics.append({"name": name, "value": meta[key], "split": "test"})
    block = {
        "kind": "joint" if meta["kind"] == JOINT_KIND else "understanding",
        "uniemo_version": __version__,
        "classes": list(meta["classes"]),
        "data": {
            "dataset": Path(str(dataset.get("root", ""))).name or None,
            "format": dataset.get("format"),
            "train_images": sum(counts.values()) or None,
        },
        "training": settings,
        "metrics": metrics,
    }
    if meta["kind"] == JOINT_KIND:
        block["diffusion"] = meta.get("diffusion")
        block["sampling"] = {k: v for k, v in (meta.get("sampling") or {}).items() if v is not None}
    return block


def _body(repo_id: str, block: dict[str, Any]) -> str:
    joint = block["kind"] == "joint"
    emotion = block["classes"][0]
    if joint:
        load = f'pipe = UniEmoPipeline.from_pretrained("{repo_id}")\nimages = pipe("{emotion}", num_images=4).images'
        command = f"uniemo generate --checkpoint {repo_id} --emotion {emotion} --out images"
    else:
        load = f'clf = EmotionClassifier.from_pretrained("{repo_id}")\nprint(clf.predict(["photo.jpg"])[0].label)'
        command = f"uniemo classify --checkpoint {repo_id} photo.jpg"
    data = block["data"]
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        "A checkpoint of uniemo, an open implementation of UniEmo: "
        + (
            "the joint UniEmo model (expert-query CLIP, mappers and emotion space) that conditions "
            f"`{block.get('diffusion')}` to create images evoking an emotion."
            if joint
            else "an expert-query CLIP that reads the emotion an image evokes."
        ),
        "",
        "```python",
        f"from uniemo import {'UniEmoPipeline' if joint else 'EmotionClassifier'}",
        "",
        load,
        "```",
        "",
        f"From the shell: `{command}`.",
        "",
        "## Data",
        "",
        f"Classes: {', '.join(block['classes'])}. Trained on `{data['dataset']}` ({data['format']} layout, "
        f"{data['train_images']} training images).",
        *(
            [
                "",
                "Built on uniemo's tiny stand-in models (`uniemo-standin`), which know only its built-in synthetic "
                "dataset: its figures show that the mechanism learns, not how well it does on real photographs.",
            ]
            if STANDIN in (block.get("diffusion"), (block["training"].get("model") or {}).get("backbone"))
            else []
        ),
        "",
        "## Measured",
        "",
    ]
    if block["metrics"]:
        lines += ["| figure | value | N | where |", "|---|---|---|---|"]
        for m in block["metrics"]:
            where = " ".join(str(m[k]) for k in ("dataset", "split", "network") if m.get(k))
            value = m["value"] if not isinstance(m["value"], float) else f"{m['value']:.4g}"
            lines.append(f"| {m['name']} | {value} | {m.get('n') or '–'} | {where or '–'} |")
    else:
        lines.append("Nothing was measured for this card (`uniemo push-to-hub --evaluation REPORT.json` adds it).")
    if joint:
        sampling = ", ".join(f"{k} {v}" for k, v in block["sampling"].items()) or "uniemo's"
        lines += ["", "## Sampling defaults", "", f"{sampling} (what `generate` uses when a call leaves them out)."]
    lines += [
        "",
        "## Training settings",
        "",
        "The run's resolved config, less the training machine's paths, is in this card's metadata (`uniemo.training`)"
        " and in `config.yaml`.",
    ]
    return "\n".join(lines) + "\n"


def write_card(directory: str | Path, repo_id: str, evaluations: list[dict[str, Any]] = ()) -> Path:
    """Writes the model card (``README.md``) of the checkpoint in ``directory`` for ``repo_id``."""
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    block = card_data(directory, evaluations)
    tags = ["uniemo", "emotion", "text-to-image" if block["kind"] == "joint" else "image-classification"]
    data = ModelCardData(library_name="uniemo", license="apache-2.0", tags=tags, uniemo=block)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(repo_id, block)}")
    card.save(directory / CARD_FILE)
    return directory / CARD_FILE


def read_card(directory: str | Path) -> dict[str, Any] | None:
    """The ``uniemo`` block of a checkpoint's model card (None when the checkpoint has no card)."""
    from huggingface_hub import ModelCard

    file = Path(directory) / CARD_FILE
    if not file.is_file():
        return None
    return ModelCard.load(file).data.to_dict().get("uniemo")


# --------------------------------------------------------------------------------------------------------------
# Publishing


def stage_for_hub(checkpoint: str | Path, folder: str | Path, repo_id: str, evaluations: list[Path] = ()) -> Path:
    """Copies what a hub repository holds of a local checkpoint (no optimiser state) into ``folder``, with its card.

    Raises:
        CheckpointError: no checkpoint there, or an evaluation report that cannot be read.
    """
    source = resolve_checkpoint(checkpoint)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, MODEL_FILE, CONFIG_FILE):
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    if (source / SAVED_DIFFUSION).is_dir():
        shutil.copytree(source / SAVED_DIFFUSION, folder / SAVED_DIFFUSION, dirs_exist_ok=True)
    reports = []
    for path in evaluations:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read the evaluation report {path} ({err})") from None
    write_card(folder, repo_id, reports)
    return folder


def push_to_hub(
    checkpoint: str | Path,
    repo_id: str,
    *,
    evaluations: list[Path] = (),
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload uniemo checkpoint",
) -> str:
    """Publishes a local checkpoint (or a run directory's ``best/``) as the hub repository ``repo_id`` with a
    generated model card; ``evaluations``: report JSON files of ``uniemo evaluate`` whose figures the card states.
    Returns the commit's URL.

    Raises:
        CheckpointError: no checkpoint there, or the hub refused the upload (not logged in, no write access).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token, library_name="uniemo", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="uniemo-push-") as tmp:
        folder = stage_for_hub(checkpoint, tmp, repo_id, evaluations)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message
            )
        except (HfHubHTTPError, OfflineModeIsEnabled) as err:
            raise CheckpointError(f"could not publish to '{repo_id}': {str(err).splitlines()[0]}") from None
    return str(commit.commit_url)
