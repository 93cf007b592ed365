"""Constants that exist once in the project: emotion names, sentiment mapping, CLIP normalisation."""

from __future__ import annotations

#: EmoSet's eight emotions in its index order (METHOD §1). Indices 0–3 are positive, 4–7 negative.
EMOSET_EMOTIONS: tuple[str, ...] = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
)
POSITIVE_EMOTIONS: frozenset[str] = frozenset(EMOSET_EMOTIONS[:4])
NEGATIVE_EMOTIONS: frozenset[str] = frozenset(EMOSET_EMOTIONS[4:])

#: EmotionROI's six Ekman classes, in alphabetical order (METHOD §1).
EMOTIONROI_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
#: Twitter I / II's two sentiment classes.
SENTIMENTS: tuple[str, ...] = ("negative", "positive")

#: CLIP's image normalisation (OpenAI CLIP preprocessing).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Size of CLIP's BPE vocabulary; a tokenizer of another size was built wrong (see ENVIRONMENT: offline traps).
CLIP_VOCAB_SIZE = 49408
#: Token ids a CLIP text config must name (transformers' default 2 breaks EOS pooling once tokens are added).
CLIP_SPECIAL_TOKEN_IDS: dict[str, int] = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}

#: The sampler used when none is named: DPM-Solver++ (2nd order, multistep) reaches at 25 steps what DDIM or
#: PLMS reach at 50. ``scheduler="model", steps=50`` is the paper's (and EmoGen's) setting: the diffusion model's
#: own scheduler (PLMS for SD 1.5) at diffusers' default 50 steps.
DEFAULT_SCHEDULER = "dpm++"
DEFAULT_STEPS = 25
#: Classifier-free guidance when the checkpoint does not carry its own (Stable Diffusion's usual 7.5).
DEFAULT_GUIDANCE = 7.5
#: The emotion space's spread when sampling a condition (1: as trained, METHOD §5; 0: its mean).
DEFAULT_DIVERSITY = 1.0
#: The ``model_index.json`` key by which a diffusion model directory names the sampler it is best sampled with
#: (``model``: its own scheduler); diffusers ignores keys that start with "_".
PREFERRED_SCHEDULER = "_uniemo_scheduler"


def positive_mask(classes: list[str] | tuple[str, ...]) -> list[bool] | None:
    """Per class, whether it is a positive emotion; None unless every class is one of EmoSet's eight emotions
    (only then does the 2-class sentiment mapping apply)."""
    if not classes or not set(classes) <= set(EMOSET_EMOTIONS):
        return None
    return [c in POSITIVE_EMOTIONS for c in classes]
