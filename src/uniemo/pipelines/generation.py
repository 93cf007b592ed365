"""Emotion-conditioned generation from a joint (stage-2) checkpoint: the four modes of METHOD §5.

>>> pipe = UniEmoPipeline.from_pretrained("runs/joint")              # doctest: +SKIP  (or a hub id)
>>> pipe("awe", num_images=4, seed=0).images                          # one emotion
>>> pipe("fear", prompt="a bench").images                             # emotion transfer onto content
>>> pipe({"amusement": 0.5, "awe": 0.5}).images                       # emotion fusion
>>> pipe(reference="photo.jpg", prompt="a cup").images                # a reference image's feeling

The condition c replaces a placeholder token's input embedding in the frozen text encoder(s); the images come
from the diffusion model's own pipeline (any diffusers scheduler, classifier-free guidance, a negative prompt).
The same arguments and seed give the same images.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from uniemo import hub
from uniemo.checkpoint import CONFIG_FILE, SAVED_DIFFUSION, atomic_directory, resolve_checkpoint, save_model
from uniemo.config import SamplingConfig
from uniemo.constants import DEFAULT_DIVERSITY, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, PREFERRED_SCHEDULER
from uniemo.data.images import load_image
from uniemo.data.transforms import ClipTransform
from uniemo.errors import CheckpointError, ConfigError
from uniemo.models.diffusion import load_stable_diffusion
from uniemo.models.emotion_space import fuse_conditions
from uniemo.models.factory import resolve_spec
from uniemo.models.placeholder import PromptEncoder
from uniemo.models.uniemo import UniEmoModel
from uniemo.runtime import default_device

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAMPLING = SamplingConfig()  # the defaults of __call__'s sampling settings


def default_scheduler(diffusion: str | None) -> str:
    """The sampler used when none is named, for the diffusion model ``diffusion`` (a spec or path): the one its
    directory names in ``model_index.json`` as ``_uniemo_scheduler`` (``uniemo train base`` writes ``model`` for the
    stand-in, whose own DDPM samples it better), else :data:`DEFAULT_SCHEDULER`."""
    if diffusion is None:
        return DEFAULT_SCHEDULER
    try:
        index = json.loads((Path(resolve_spec(diffusion, "sd")) / "model_index.json").read_text())
    except (OSError, ValueError):  # a hub id, or no diffusers directory
        return DEFAULT_SCHEDULER
    return str(index.get(PREFERRED_SCHEDULER, DEFAULT_SCHEDULER))


#: Scheduler names accepted by ``scheduler=`` / ``--scheduler`` → diffusers class (``model``: the diffusion
#: model's own scheduler, as shipped).
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "model": "",
}


@dataclass(frozen=True)
class GenerationSettings:
    """The settings that reproduce a generation (``settings.json`` holds :meth:`to_dict`).

    Attributes:
        prompt: the content asked for (None: the emotion alone).
        text: the prompt the text encoder saw, with the placeholder where c goes.
        num_images: images made (with several references: ``num_images`` of each, all counted).
        steps / guidance / seed / negative_prompt / size: the sampling settings used (defaults filled in).
        scheduler: the sampler's name, or the diffusion model's own scheduler class (``scheduler="model"``).
        emotions / diversity: emotion mode: the normalised weights and the emotion space's scale (else None).
        reference / read: reference mode: the reference(s) (``"<image>"`` for one given in memory) and the emotion
            the model read in each (else None).
    """

    prompt: str | None
    text: str
    num_images: int
    steps: int
    guidance: float
    scheduler: str
    seed: int
    negative_prompt: str
    size: int
    emotions: dict[str, float] | None = None
    diversity: float | None = None
    reference: str | list[str] | None = None
    read: str | list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the other mode's fields left out."""
        mode = ("emotions", "diversity", "reference", "read")
        return {k: v for k, v in asdict(self).items() if k not in mode or v is not None}


@dataclass
class GenerationOutput:
    """What a call of :class:`UniEmoPipeline` returns.

    Attributes:
        images: N PIL images, image i from seed + i.
        settings: the :class:`GenerationSettings` that reproduce them.
        conditions: (N, Σ d_c) the condition c each image was made from.
    """

    images: list[Image.Image]
    settings: GenerationSettings
    conditions: torch.Tensor


def parse_emotion_weights(spec: str | Sequence[str] | Mapping[str, float], classes: Sequence[str]) -> dict[str, float]:
    """``"awe"``, ``["amusement=0.5", "awe=0.5"]`` or ``{"awe": 1}`` → normalised weights per emotion.

    Raises:
        ConfigError: an unknown emotion, a weight that is not a non-negative number, or weights summing to 0.
    """
    if isinstance(spec, str):
        spec = [spec]
    items: list[tuple[str, Any]] = []
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        for entry in spec:
            name, _, weight = str(entry).partition("=")
            items.append((name.strip(), weight.strip() if weight else 1.0))
    weights: dict[str, float] = {}
    for name, weight in items:
        if name not in classes:
            raise ConfigError(f"unknown emotion '{name}'; this model knows: {', '.join(classes)}")
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"the weight of '{name}' must be a number, got {weight!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"the weight of '{name}' must be a finite number ≥ 0, got {weight!r}")
        weights[name] = weights.get(name, 0.0) + value
    total = sum(weights.values())
    if not weights or total <= 0:
        raise ConfigError("emotion weights must sum to a positive value (e.g. amusement=0.5 awe=0.5)")
    return {name: w / total for name, w in weights.items() if w > 0}  # a zero weight leaves its emotion out


class UniEmoPipeline:
    """A joint checkpoint with its diffusion model, ready to generate.

    Attributes:
        model: the :class:`UniEmoModel` (understanding, mappers, priors, emotion space).
        diffusion: the diffusers pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``).
        encoder: the placeholder-aware :class:`PromptEncoder`.
        classes: emotion names in index order.
        meta: the checkpoint's ``model.json``.
        config_yaml: the resolved config of the run that trained it (``config.yaml``), when known.
        card: the ``uniemo`` block of the checkpoint's model card (:func:`uniemo.hub.read_card`), when it has one.
    """

    def __init__(
        self,
        model: UniEmoModel,
        diffusion: Any,
        meta: dict[str, Any],
        config_yaml: str | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.diffusion = diffusion
        self.meta = meta
        self.config_yaml = config_yaml
        self.card = card
        self.encoder = PromptEncoder(diffusion, meta.get("placeholder", "<emotion>"))
        self.classes: list[str] = list(meta["classes"])
        self.resolution = int(meta.get("resolution", 512))
        self.transform = ClipTransform(model.understanding.image_size)
        self.diffusion.set_progress_bar_config(disable=True)
        self._negative_cache: dict[str, Any] = {}
        #: what ``scheduler=None`` samples with (:func:`default_scheduler` of the stored diffusion model)
        self.default_scheduler = default_scheduler(meta.get("diffusion"))

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """``steps``, ``guidance``, ``scheduler`` and ``diversity`` used when a call leaves them out: those the
        checkpoint carries (``model.json``'s ``sampling``: measured best for it when it was trained, e.g. the
        stand-in's guidance 3), else 25 steps, guidance 7.5, :attr:`default_scheduler` and diversity 1."""
        carried = {k: v for k, v in (self.meta.get("sampling") or {}).items() if v is not None}
        defaults = {
            "steps": DEFAULT_STEPS,
            "guidance": DEFAULT_GUIDANCE,
            "scheduler": self.default_scheduler,
            "diversity": DEFAULT_DIVERSITY,
        }
        return {**defaults, **carried}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def placeholder(self) -> str:
        return self.encoder.placeholder

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = "cpu",
        diffusion: str | None = None,
        dtype: torch.dtype | str | None = torch.float32,
        revision: str | None = None,
    ) -> UniEmoPipeline:
        """Loads a joint checkpoint (a run directory, its ``last/``, or a hub id ``owner/name`` at ``revision``,
        through the hub cache: offline when ``HF_HUB_OFFLINE=1``) and the diffusion model it was trained with
        (its own copy when saved with ``include_diffusion``, else the stored hub id or path; ``diffusion``
        overrides both). ``device`` None: ``cuda`` when available, else ``cpu``. ``dtype`` is the diffusion
        model's, a ``torch.dtype`` or its name (``float16`` on a GPU halves its memory); None: ``float16`` on a
        GPU, ``float32`` on the CPU. The UniEmo model stays in float32.

        Raises:
            CheckpointError: not a finished joint checkpoint, another architecture, or no diffusion model.
        """
        device = default_device(device)
        if dtype is None:
            dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = _DTYPES[dtype]
        directory = resolve_checkpoint(path, revision)
        model, meta = UniEmoModel.load(directory)
        trained_with = meta.get("diffusion")
        if diffusion is None:
            saved = directory / SAVED_DIFFUSION
            diffusion = str(saved) if saved.is_dir() else meta["diffusion"]
        else:
            trained_with = diffusion  # the sampler default follows the model actually used
        pipe = load_stable_diffusion(diffusion, seed=int(meta.get("diffusion_seed", 0)))
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
        config = directory / CONFIG_FILE
        pipeline = cls(model, pipe, meta, config.read_text() if config.is_file() else None, hub.read_card(directory))
        pipeline.default_scheduler = default_scheduler(trained_with)
        if list(pipeline.encoder.condition_dims) != list(model.config.condition_dims):
            raise CheckpointError(
                f"the diffusion model '{diffusion}' takes conditions of width {pipeline.encoder.condition_dims}, "
                f"the checkpoint's mappers give {list(model.config.condition_dims)}: it was trained for another one"
            )
        return pipeline.to(device)

    def to(self, device: str | torch.device) -> UniEmoPipeline:
        self.model.to(device)
        self.diffusion.to(device)
        return self

    def save_pretrained(self, directory: str | Path, include_diffusion: bool = False) -> None:
        """Writes a checkpoint that :meth:`from_pretrained` reads (atomically); ``include_diffusion`` also copies
        the diffusion pipeline into it (large for real models; otherwise the stored hub id/path is used)."""
        meta = {k: v for k, v in self.meta.items() if k != "format_version"}
        with atomic_directory(directory) as tmp:
            save_model(tmp, self.model, meta, self.config_yaml)
            if include_diffusion:
                self.diffusion.save_pretrained(tmp / SAVED_DIFFUSION)

    def push_to_hub(
        self, repo_id: str, evaluations: list[str | Path] = (), include_diffusion: bool = False, **kwargs: Any
    ) -> str:
        """Publishes the checkpoint as the hub repository ``repo_id`` with a generated model card (see
        :func:`uniemo.hub.push_to_hub` for ``evaluations``, ``revision``, ``private`` and ``token``);
        ``include_diffusion`` uploads the diffusion model too (else the card and ``model.json`` name the one it
        was trained with). Returns the commit's URL."""
        with tempfile.TemporaryDirectory(prefix="uniemo-") as tmp:
            self.save_pretrained(Path(tmp) / "checkpoint", include_diffusion=include_diffusion)
            return hub.push_to_hub(Path(tmp) / "checkpoint", repo_id, evaluations=evaluations, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    def _require_space(self) -> None:
        if not self.model.has_emotion_space():
            if self.meta.get("finished"):  # a run without L(θ) (joint.diffusion_weight=0) trained no mapper
                raise CheckpointError("this checkpoint was trained without L(θ): an understanding model, no generator")
            raise CheckpointError(
                "this checkpoint has no emotion space: joint training did not finish (finish it with --resume); "
                "a reference image still works"
            )

    def emotion_conditions(
        self, weights: Mapping[str, float], num_images: int, seed: int, diversity: float = DEFAULT_DIVERSITY
    ) -> torch.Tensor:
        """c for each image (N, Σ d_c): per image, one sample of the emotion space per weighted emotion
        (generator seeded by seed + image index), fused as Σ w_k c_k."""
        with torch.no_grad():
            self._require_space()
            names = list(weights)
            ids = torch.tensor([self.classes.index(n) for n in names], device=self.device)
            w = [weights[n] for n in names]
            out = []
            for i in range(num_images):
                # The same draw for every emotion of the mix (a generator per emotion, seeded alike), so weights
                # (1, 0) give exactly the single emotion's image and intermediate weights move between them.
                parts = []
                for k in ids.cpu():
                    feats = self.model.sample_features(k.view(1), torch.Generator().manual_seed(seed + i), diversity)
                    parts.append({name: v.to(self.device) for name, v in feats.items()})
                feats = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}  # each (E, D)
                out.append(fuse_conditions(self.model.condition(feats, ids), w))  # (E, Σ d_c) → (Σ d_c,)
            return torch.stack(out)

    def reference_condition(self, image: Image.Image | str | Path) -> tuple[torch.Tensor, str]:
        """c (1, Σ d_c) from a reference image's own (cls, s, o); α for the emotion the model reads in it."""
        pil = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        with torch.no_grad():
            out = self.model.understanding(self.transform(pil).unsqueeze(0).to(self.device))
            emotion = out.logits.argmax(-1)
            feats = {"cls": out.cls, "scene": out.scene, "object": out.object}
            return self.model.condition(feats, emotion), self.classes[int(emotion)]

    def _negative(self, negative_prompt: str) -> dict[str, torch.Tensor]:
        """The negative prompt's embeddings for one image (the text encoder is frozen, so they are kept: the same
        negative prompt is encoded once, not once per batch)."""
        key = (
            negative_prompt,
            self.encoder.injectors[0].text_encoder.device,
            self.encoder.injectors[0].text_encoder.dtype,
        )
        if self._negative_cache.get("key") != key:
            negative = self.encoder.encode([negative_prompt])
            if (
                self.encoder.is_xl
                and not negative_prompt
                and self.diffusion.config.get("force_zeros_for_empty_prompt")
            ):
                negative = {k: torch.zeros_like(v) for k, v in negative.items()}  # as SDXL itself does
            self._negative_cache = {"key": key, "embeds": negative}
        return self._negative_cache["embeds"]

    @contextlib.contextmanager
    def _scheduler(self, name: str) -> Iterator[None]:
        original = self.diffusion.scheduler
        if name != "model":
            if name not in SCHEDULERS:
                raise ConfigError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}")
            import diffusers

            extra = {"skip_prk_steps": True} if name == "pndm" else {}  # PLMS, as Stable Diffusion ships it
            # Every value of the model's config passed on explicitly, defaults included: diffusers otherwise lets the
            # new class's own defaults replace the ones the model never wrote down (timestep_spacing would be
            # "linspace" for a scheduler built in memory and "leading" once saved and reloaded).
            config = {k: v for k, v in original.config.items() if k != "_use_default_values"}
            self.diffusion.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(config, **extra)
        try:
            yield
        finally:
            self.diffusion.scheduler = original

    def prompt_for(self, prompt: str | None) -> str:
        """The prompt the text encoder sees: the training template without content, else the content and the
        placeholder joined by the checkpoint's transfer template (``"<ph>, <content>"`` by default, ``"<content>,
        <ph>"`` for checkpoints written before it was carried); a prompt that already holds the placeholder is kept
        as it is.

        Raises:
            ConfigError: the prompt is longer than the text encoder reads (77 tokens; its end would be cut off, the
                placeholder too when it comes last), or holds the placeholder more than once.
        """
        if not prompt:
            text = self.meta.get("template", "{}").format(self.placeholder)
        else:
            joined = self.meta.get("transfer_template", "{content}, {placeholder}")
            own = self.placeholder in prompt
            text = prompt if own else joined.format(content=prompt, placeholder=self.placeholder)
        try:
            for injector in self.encoder.injectors:
                injector.tokenize([text])
                tokenizer = injector.tokenizer
                if len(tokenizer(text).input_ids) > tokenizer.model_max_length:  # the end would be cut off
                    raise ValueError(text)
        except ValueError:
            raise ConfigError(
                f"the prompt must leave room for {self.placeholder} (77 tokens in all) and hold it at most once: "
                f"{prompt!r}"
            ) from None
        return text

    def __call__(
        self,
        emotion: str | Sequence[str] | Mapping[str, float] | None = None,
        prompt: str | None = None,
        reference: Image.Image | str | Path | Sequence[Image.Image | str | Path] | None = None,
        num_images: int = 1,
        steps: int | None = _SAMPLING.steps,
        guidance: float | None = _SAMPLING.guidance,
        scheduler: str | None = _SAMPLING.scheduler,
        seed: int = _SAMPLING.seed,
        negative_prompt: str = _SAMPLING.negative_prompt,
        batch_size: int = 8,
        size: int | None = None,
        diversity: float | None = _SAMPLING.diversity,
    ) -> GenerationOutput:
        """Generates ``num_images`` images: 1. check the inputs, 2. the conditions of the mode, 3. the prompt,
        4. denoise and decode in the diffusion model's pipeline.

        Args:
            emotion: one emotion, several with weights (``["amusement=0.5", "awe=0.5"]`` or a dict), or None
                with ``reference``.
            prompt: content to transfer the emotion onto (``"a bench"``); None generates the emotion alone.
            reference: an image whose feeling (its own cls, s, o) conditions the images instead of an emotion; a
                list of images gives ``num_images`` images of each, in order (image i still uses seed + i).
            steps / guidance / scheduler / negative_prompt: sampling settings (scheduler: a name of
                :data:`SCHEDULERS`, ``"model"`` the diffusion model's own); None takes the checkpoint's
                :attr:`sampling_defaults`.
            seed: images i use seed + i, for the emotion-space sample and for the initial noise.
            size: image side; default the training resolution.
            diversity: scales the emotion space's spread when sampling (1: METHOD §5; 0: the mean); default
                :attr:`sampling_defaults`.

        Raises:
            ConfigError: neither or both of ``emotion`` and ``reference``, unknown names, bad weights or values.
        """
        # 1. check the inputs; the checkpoint's sampling defaults fill what is left out
        if (emotion is None) == (reference is None):
            raise ConfigError("give an emotion (or weighted emotions) or a reference image, not both or neither")
        defaults = self.sampling_defaults
        steps = defaults["steps"] if steps is None else steps
        guidance = defaults["guidance"] if guidance is None else guidance
        scheduler = scheduler or defaults["scheduler"]
        diversity = defaults["diversity"] if diversity is None else diversity
        if num_images < 1 or steps < 1 or guidance < 0 or diversity < 0:
            raise ConfigError("num_images and steps must be ≥ 1, guidance and diversity ≥ 0")
        # 2. the conditions c (N, Σ d_c): sampled from the emotion space (fused by the weights), or the references'
        if reference is not None:
            conditions, mode = self._reference_conditions(reference, num_images)
        else:
            weights = parse_emotion_weights(emotion, self.classes)
            conditions = self.emotion_conditions(weights, num_images, seed, diversity)
            mode = {"emotions": weights, "diversity": diversity}
        # 3. the prompt: the training template, or the content with the placeholder after it
        text = self.prompt_for(prompt)
        # 4. denoise and decode, in batches, one seeded generator per image
        side = size or self.resolution
        with self._scheduler(scheduler):
            images = self._denoise(text, conditions, steps, guidance, seed, negative_prompt, batch_size, side)
        name = type(self.diffusion.scheduler).__name__ if scheduler == "model" else scheduler
        settings = GenerationSettings(
            prompt, text, len(conditions), steps, guidance, name, seed, negative_prompt, side, **mode
        )
        return GenerationOutput(images, settings, conditions)

    def _reference_conditions(
        self, reference: Image.Image | str | Path | Sequence[Image.Image | str | Path], num_images: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """c (N, Σ d_c) of one reference (``num_images`` times) or of several (``num_images`` of each, in order),
        and what :class:`GenerationSettings` records of them."""

        def name(r: Any) -> str:
            return str(r) if isinstance(r, (str, Path)) else "<image>"

        if isinstance(reference, (list, tuple)):
            if not reference:
                raise ConfigError("give at least one reference image")
            pairs = [self.reference_condition(r) for r in reference]
            conditions = torch.cat([c for c, _ in pairs]).repeat_interleave(num_images, dim=0)  # (R·N, Σ d_c)
            return conditions, {"reference": [name(r) for r in reference], "read": [read for _, read in pairs]}
        condition, read = self.reference_condition(reference)
        return condition.expand(num_images, -1), {"reference": name(reference), "read": read}

    def _denoise(
        self,
        text: str,
        conditions: torch.Tensor,
        steps: int,
        guidance: float,
        seed: int,
        negative_prompt: str,
        batch_size: int,
        side: int,
    ) -> list[Image.Image]:
        """The diffusion model's own sampling loop on ``text`` with each c (N, Σ d_c) in the placeholder's place,
        classifier-free guidance against ``negative_prompt``; image i's initial noise from seed + i."""
        images: list[Image.Image] = []
        with torch.no_grad():
            for start in range(0, len(conditions), batch_size):
                chunk = conditions[start : start + batch_size]
                n = len(chunk)
                positive = self.encoder.encode([text] * n, chunk)
                negative = {k: v.expand(n, *v.shape[1:]) for k, v in self._negative(negative_prompt).items()}
                kwargs = {
                    "prompt_embeds": positive["prompt_embeds"],
                    "negative_prompt_embeds": negative["prompt_embeds"],
                }
                if self.encoder.is_xl:
                    kwargs["pooled_prompt_embeds"] = positive["pooled_prompt_embeds"]
                    kwargs["negative_pooled_prompt_embeds"] = negative["pooled_prompt_embeds"]
                generators = [torch.Generator(self.device).manual_seed(seed + start + i + 1_000_000) for i in range(n)]
                result = self.diffusion(
                    **kwargs,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generators,
                    height=side,
                    width=side,
                    output_type="pil",
                )
                images.extend(result.images)
        return images


def emotion_accuracy(
    pipe: UniEmoPipeline, judge: Any, per_emotion: int, **settings: Any
) -> tuple[dict[str, Any], list[list[Image.Image]]]:
    """Emo-A as the issue defines it for the stand-in: ``per_emotion`` images of every emotion (seeds 0…),
    read by ``judge`` (an :class:`~uniemo.pipelines.classifier.EmotionClassifier`); returns
    ``{"emo_a", "num_images", "per_emotion"}`` and the images, one list per emotion."""
    hits, images = {}, []
    for emotion in pipe.classes:
        generated = pipe(emotion, num_images=per_emotion, **settings).images
        predicted = judge.probabilities(generated).argmax(1)
        hits[emotion] = int((predicted == judge.classes.index(emotion)).sum())
        images.append(generated)
    total = per_emotion * len(pipe.classes)
    result = {
        "emo_a": sum(hits.values()) / total,
        "num_images": total,
        "per_emotion": {e: h / per_emotion for e, h in hits.items()},
    }
    return result, images


def save_generation(
    output: GenerationOutput, out_dir: str | Path, stem: str = "image", extra: dict[str, Any] | None = None
) -> list[Path]:
    """Writes ``<stem>_NNN.png`` and ``settings.json`` (the settings, ``extra``, the file names) into ``out_dir``;
    returns the image paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(output.images):
        path = out / f"{stem}_{i:03d}.png"
        image.save(path)
        paths.append(path)
    settings = {**output.settings.to_dict(), **(extra or {}), "files": [p.name for p in paths]}
    (out / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    return paths
