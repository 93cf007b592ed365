"""Where models come from: :func:`create_model` / :func:`list_models` for the UniEmo understanding model (a named
preset or a checkpoint), and the CLIP towers under it (a hub id, a local directory, or a named architecture with
random weights).

Presets are small JSON files in ``presets/`` (a CLIP backbone and the expert-query architecture), in the manner of
open_clip's model configs; ``create_model("uniemo-vit-b-32")`` builds the paper's default around the pretrained
CLIP, ``create_model("runs/x/understanding")`` loads a trained one.

Named architectures are small JSON files in ``clip_architectures/`` (``list_architectures()``), in the manner of
open_clip's model configs. They build the real transformers classes (``CLIPVisionModel``,
``CLIPTextModelWithProjection``) at any size, so the demo and the tests run the same code as a real
checkpoint. Their tokenizer is CLIP's real BPE tokenizer, built from the vocabulary shipped in
``uniemo/assets`` (a hub tokenizer cannot be fetched offline, and transformers then silently returns a
2-token one: :func:`check_tokenizer` refuses it).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from uniemo.constants import CLIP_SPECIAL_TOKEN_IDS, CLIP_VOCAB_SIZE
from uniemo.errors import CheckpointError, ConfigError
from uniemo.models.architecture import ExpertQueryConfig
from uniemo.models.understanding import ExpertQueryCLIP

logger = logging.getLogger(__name__)

_CONFIG_PACKAGE = "uniemo.models.clip_architectures"
_PRESET_PACKAGE = "uniemo.models.presets"
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


#: The stand-in pretrained models trained by ``uniemo train base`` and shipped in ``uniemo/assets/standin``:
#: as a CLIP spec it is the ``clip/`` directory, as a Stable Diffusion spec the ``sd/`` directory.
STANDIN = "uniemo-standin"


def standin_path(part: str = "") -> Path:
    """The shipped stand-in's directory (``part``: ``clip`` or ``sd``)."""
    return Path(str(resources.files("uniemo.assets").joinpath("standin"))) / part


def resolve_spec(spec: str, part: str) -> str:
    """``uniemo-standin`` → the shipped stand-in's ``part`` directory; any other spec unchanged."""
    return str(standin_path(part)) if spec == STANDIN else spec


def list_architectures() -> list[str]:
    """Names of the built-in CLIP architectures (random init), e.g. ``tiny-clip``."""
    return _json_names(_CONFIG_PACKAGE)


def is_architecture_name(spec: str) -> bool:
    """Whether ``spec`` names a built-in architecture rather than a checkpoint."""
    return spec in list_architectures()


def architecture_config(name: str) -> Any:
    """The ``transformers.CLIPConfig`` of a named architecture.

    Raises:
        CheckpointError: ``name`` is not a built-in architecture.
    """
    from transformers import CLIPConfig

    if not is_architecture_name(name):
        raise CheckpointError(f"unknown architecture '{name}'; built-in ones: {', '.join(list_architectures())}")
    spec = json.loads(resources.files(_CONFIG_PACKAGE).joinpath(f"{name}.json").read_text())
    dim = spec["projection_dim"]  # each tower's config carries it too: the *WithProjection models read it there
    text = {"vocab_size": CLIP_VOCAB_SIZE, **CLIP_SPECIAL_TOKEN_IDS, **spec["text_config"], "projection_dim": dim}
    vision = {**spec["vision_config"], "projection_dim": dim}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=dim)


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def from_pretrained_or_explain(cls: Any, spec: str, what: str, instead: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(spec)`` from safetensors only (a pickled ``.bin`` is refused, never unpickled); a
    failure becomes one :class:`CheckpointError` saying what to give instead."""
    if not cls.__name__.endswith("Tokenizer"):
        kwargs.setdefault("use_safetensors", True)
    try:
        return cls.from_pretrained(spec, **kwargs)
    except (OSError, ValueError) as err:
        where = "local directory" if Path(spec).exists() else "hub id"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load {what} from {where} '{spec}': {first}. Give {instead}") from None


def _from_pretrained(cls: Any, spec: str, what: str) -> Any:
    instead = (
        "a local directory holding a CLIP checkpoint (config.json and weights), a hub id that is in the local "
        f"Hugging Face cache, or one of the built-in architectures: {', '.join(list_architectures())}"
    )
    if cls.__name__.endswith("Tokenizer"):
        return from_pretrained_or_explain(cls, resolve_spec(spec, "clip"), f"the {what}", instead)
    # float32 whatever the stored precision (the stand-in is stored in float16 to stay small).
    return from_pretrained_or_explain(cls, resolve_spec(spec, "clip"), f"the {what}", instead, dtype=torch.float32)


def load_clip_vision(spec: str, seed: int = 0) -> Any:
    """A ``transformers.CLIPVisionModel`` from a hub id, a local directory or a named architecture.

    Args:
        spec: ``openai/clip-vit-base-patch32``, ``/path/to/clip`` or e.g. ``tiny-clip`` (random init).
        seed: seeds the random initialisation of a named architecture.
    """
    from transformers import CLIPVisionModel

    if is_architecture_name(spec):
        with _seeded(seed):
            return CLIPVisionModel(architecture_config(spec).vision_config)
    return _from_pretrained(CLIPVisionModel, spec, "CLIP vision tower")


def load_clip_text(spec: str, seed: int = 0) -> tuple[Any, Any]:
    """A frozen-ready ``CLIPTextModelWithProjection`` and its ``CLIPTokenizer``.

    Args:
        spec: a hub id, a local directory or a named architecture (random init, CLIP's real BPE tokenizer).
        seed: seeds the random initialisation of a named architecture.
    """
    from transformers import CLIPTextModelWithProjection

    if is_architecture_name(spec):
        config = architecture_config(spec)
        with _seeded(seed + 1):
            model = CLIPTextModelWithProjection(config.text_config)
        return model, clip_tokenizer()
    from transformers import CLIPTokenizer

    model = _from_pretrained(CLIPTextModelWithProjection, spec, "CLIP text tower")
    tokenizer = _from_pretrained(CLIPTokenizer, spec, "CLIP tokenizer")
    check_tokenizer(tokenizer, spec)
    return model, tokenizer


def _json_names(package: str) -> list[str]:
    return sorted(f.name[: -len(".json")] for f in resources.files(package).iterdir() if f.name.endswith(".json"))


def list_models() -> list[str]:
    """Names of the understanding-model presets that :func:`create_model` builds, e.g. ``uniemo-vit-b-32``."""
    return _json_names(_PRESET_PACKAGE)


def model_preset(name: str) -> dict[str, Any]:
    """A preset's JSON: ``description``, ``backbone`` (a CLIP spec) and ``expert_queries`` (ExpertQueryConfig fields).

    Raises:
        CheckpointError: ``name`` is not a preset.
    """
    if name not in list_models():
        presets = ", ".join(list_models())
        raise CheckpointError(f"unknown model '{name}': give a preset ({presets}) or a checkpoint directory")
    return json.loads(resources.files(_PRESET_PACKAGE).joinpath(f"{name}.json").read_text())


def _random_vision(spec: str, seed: int) -> Any:
    """A CLIP vision tower of ``spec``'s architecture with random weights (only its config is read)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if is_architecture_name(spec):
        return load_clip_vision(spec, seed)
    try:
        config = CLIPVisionConfig.from_pretrained(resolve_spec(spec, "clip"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the CLIP config of '{spec}': {str(err).strip().splitlines()[0]}") from None
    with _seeded(seed):
        return CLIPVisionModel(config)


def create_model(
    name_or_path: str | Path | None = None,
    *,
    backbone: str | None = None,
    pretrained: bool = True,
    num_classes: int = 8,
    attribute_dim: int | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = False,
    **overrides: Any,
) -> Any:
    """An :class:`~uniemo.models.understanding.ExpertQueryCLIP` from a preset name or a checkpoint (open_clip's
    ``create_model``).

    Args:
        name_or_path: a preset (:func:`list_models`): its CLIP backbone with new expert queries, Interactive Blocks
            and head, the model stage 1 trains; or a checkpoint / run directory: the trained model it holds. None:
            no preset (``backbone`` and the :class:`~uniemo.models.architecture.ExpertQueryConfig` defaults).
        backbone: a CLIP spec (:func:`load_clip_vision`) in place of the preset's.
        pretrained: a preset's backbone with its pretrained weights (False: random weights of its architecture).
        num_classes: K of a preset's head.
        attribute_dim: d_t; default the backbone's projection width (its CLIP text embeddings' width).
        seed: seeds the new modules (and a random backbone).
        gradient_checkpointing: recompute encoder layers in backward.
        **overrides: :class:`~uniemo.models.architecture.ExpertQueryConfig` fields that replace the preset's
            (``query_mode="none"``, ``num_scene_queries=16`` …).

    Raises:
        CheckpointError: neither a preset nor a checkpoint, or the backbone cannot be loaded.
        ConfigError: an override that is no architecture field, or options given with a checkpoint.
    """

    name = str(name_or_path) if name_or_path is not None else f"backbone={backbone}"
    if name_or_path is not None and name not in list_models() and Path(name).expanduser().exists():
        if overrides or backbone or not pretrained:
            raise ConfigError(f"{name} is a checkpoint: its architecture and weights are fixed (drop the options)")
        model = ExpertQueryCLIP.from_pretrained(name)
        model.gradient_checkpointing = gradient_checkpointing
        return model
    if name_or_path is None and backbone is None:
        raise ConfigError("create_model needs a preset, a checkpoint or a backbone")
    preset = model_preset(name) if name_or_path is not None else {"backbone": backbone, "expert_queries": {}}
    backbone = backbone or preset["backbone"]
    vision = load_clip_vision(backbone, seed) if pretrained else _random_vision(backbone, seed)
    sizes = {"num_classes": num_classes, "attribute_dim": attribute_dim or int(vision.config.projection_dim)}
    try:
        config = ExpertQueryConfig.from_dict({**preset["expert_queries"], **sizes, **overrides})
        with _seeded(seed):
            return ExpertQueryCLIP(vision, config, gradient_checkpointing=gradient_checkpointing)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"create_model('{name}'): {err}") from None


def check_tokenizer(tokenizer: Any, source: str) -> None:
    """Refuses a tokenizer that is not CLIP's 49,408-token BPE (offline loads can silently give 2 tokens)."""
    if len(tokenizer) < CLIP_VOCAB_SIZE:
        raise CheckpointError(
            f"the tokenizer loaded from '{source}' has {len(tokenizer)} tokens instead of CLIP's {CLIP_VOCAB_SIZE}: "
            "its vocabulary files are missing (an offline hub id does this). Give a local directory that holds "
            "the tokenizer files (vocab.json and merges.txt, or tokenizer.json)"
        )


def _bytes_to_unicode() -> list[str]:
    """OpenAI CLIP's reversible byte → printable-character table, in its order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files("uniemo.assets").joinpath(_BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # OpenAI's construction: skip the header line, keep 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer() -> Any:
    """CLIP's BPE tokenizer (49,408 tokens, ids identical to OpenAI's), built from the shipped vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)
    check_tokenizer(tokenizer, "the shipped CLIP vocabulary")
    return tokenizer


def save_clip_tokenizer(directory: str | Path) -> None:
    """Writes CLIP's tokenizer as ``vocab.json`` + ``merges.txt`` (1.5 MB; ``tokenizer.json`` would be 3.5 MB).

    ``CLIPTokenizer.from_pretrained(directory)`` reads it back with the same 49,408 tokens and ids.
    """
    directory = Path(directory)
    clip_tokenizer().save_pretrained(directory)
    (directory / "tokenizer.json").unlink(missing_ok=True)
    vocab, merges = _clip_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@torch.no_grad()
def encode_texts(text_model: Any, tokenizer: Any, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(len(texts), d_t) L2-normalised CLIP text embeddings (the projected EOS token)."""
    device = next(text_model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        out = text_model(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        chunks.append(torch.nn.functional.normalize(out.text_embeds.float(), dim=-1).cpu())
    if not chunks:
        return torch.zeros(0, text_model.config.projection_dim)
    return torch.cat(chunks)
