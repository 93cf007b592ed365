"""The unified model: the understanding network, α, the mappers and the emotion space (METHOD §3–§5), and the
diffusion model's text side with the placeholder (SD 1.5: one text encoder; SDXL: two).

Shape legend:
    B    batch size
    D    vision width of the understanding model
    K    emotions
    V_s / V_o  scene / object vocabulary sizes
    d_c  token-embedding width of each text encoder (c has Σ d_c entries)
    L    prompt tokens (77)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uniemo.models.fusion import (
    EmotionFusion,
    PlaceholderInjector,
    attribute_distribution,
    correlation_coefficient,
    sample_emotion_space,
)
from uniemo.models.understanding import ExpertQueryCLIP

ALPHA_MODES = ("soft", "hard", "none")
SPACE_FEATURES = ("cls", "scene", "object")


class UniEmoModel(nn.Module):
    """Understanding + generation conditioning: c = M_E(cls) + α_S·M_S(s) + α_O·M_O(o).

    Buffers (saved with the weights): ``prior_scene`` (V_s, K) and ``prior_object`` (V_o, K), P(e | a); the
    emotion space ``space_{cls,scene,object}_{mean,std}`` (K, D), filled after joint training.

    Args:
        understanding: the stage-1 network.
        condition_dims: d_c of each text encoder the condition enters.
        mapper_hidden: the mappers' hidden width.
        alpha: ``soft``, ``hard`` or ``none`` (α = 1: the "without α" ablation).
        condition_head: give c its own linear emotion classifier (``ce`` condition loss when Σ d_c ≠ D; with
            Σ d_c = D the frozen stage-1 head is used instead and this stays False).
        temperature: τ of π, the attribute distribution (stage 1's τ, so π reads the space L_S / L_O trained).
        space_bank: M, real (cls, s, o) feature sets kept per emotion, which generation samples from instead of
            the paper's diagonal Gaussian (0: the Gaussian); buffers ``space_{name}_bank`` (K, M, D).
        condition_norms: per text encoder, the norm each part of c is rescaled to (the mean norm of that
            encoder's token embeddings, so that c stays where the encoder's inputs live); None: c as mapped.
    """

    def __init__(
        self,
        understanding: ExpertQueryCLIP,
        condition_dims: Sequence[int],
        mapper_hidden: int = 1024,
        alpha: str = "soft",
        condition_head: bool = False,
        temperature: float = 0.07,
        space_bank: int = 0,
        condition_norms: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {alpha!r}")
        self.understanding = understanding
        dim = understanding.vision.config.hidden_size
        k = understanding.num_classes
        self.fusion = EmotionFusion(dim, condition_dims, mapper_hidden)
        self.alpha_mode = alpha
        self.condition_head = nn.Linear(sum(condition_dims), k) if condition_head else None
        # The `ce` condition loss reads c with the stage-1 head as it was when joint training began (frozen).
        self.register_buffer("frozen_head_weight", understanding.head.weight.detach().clone())
        self.register_buffer("frozen_head_bias", understanding.head.bias.detach().clone())
        self.register_buffer("prior_scene", torch.full((understanding.scene_vocab_embeds.shape[0], k), 1.0 / k))
        self.register_buffer("prior_object", torch.full((understanding.object_vocab_embeds.shape[0], k), 1.0 / k))
        for name in SPACE_FEATURES:
            self.register_buffer(f"space_{name}_mean", torch.zeros(k, dim))
            self.register_buffer(f"space_{name}_std", torch.zeros(k, dim))
            if space_bank:
                self.register_buffer(f"space_{name}_bank", torch.zeros(k, space_bank, dim))
        if condition_norms is not None and len(condition_norms) != len(condition_dims):
            raise ValueError(f"one condition norm per text encoder: {len(condition_dims)}, got {condition_norms}")
        self.hparams = {
            "condition_dims": list(condition_dims),
            "mapper_hidden": mapper_hidden,
            "alpha": alpha,
            "condition_head": condition_head,
            "temperature": temperature,
        }
        # Written only when set, so that checkpoints keep the architecture they had before these options existed.
        if space_bank:
            self.hparams["space_bank"] = space_bank
        if condition_norms is not None:
            self.hparams["condition_norms"] = [float(n) for n in condition_norms]

    @property
    def uses_queries(self) -> bool:
        return self.understanding.query_mode != "none"

    def generation_parameters(self) -> list[nn.Parameter]:
        """The mappers (and the condition head): the parameters only joint training creates."""
        params = list(self.fusion.parameters())
        return params + (list(self.condition_head.parameters()) if self.condition_head is not None else [])

    # ----------------------------------------------------------------------------------------------------------
    def alphas(
        self, scene_embeds: torch.Tensor | None, object_embeds: torch.Tensor | None, emotions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_S, α_O), each (B,), detached: Σ_a π(a)·P(e* | a) (METHOD §3); ones with ``alpha="none"``."""
        ones = torch.ones(len(emotions), device=emotions.device)
        if self.alpha_mode == "none" or not self.uses_queries:
            return ones, ones
        tau = self.hparams["temperature"]
        out = []
        for embeds, vocab, prior in (
            (scene_embeds, self.understanding.scene_vocab_embeds, self.prior_scene),
            (object_embeds, self.understanding.object_vocab_embeds, self.prior_object),
        ):
            if embeds is None or vocab.shape[0] == 0:
                out.append(ones)
                continue
            pi = attribute_distribution(embeds.detach(), vocab, tau)  # (B, V)
            out.append(correlation_coefficient(pi, prior, emotions, self.alpha_mode))
        return out[0], out[1]

    def forward(self, pixel_values: torch.Tensor, emotions: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Training forward: (:class:`UnderstandingOutput`, c (B, Σ d_c)) for images and their emotions (B,)."""
        out = self.understanding(pixel_values)
        feats = {"cls": out.cls, "scene": out.scene, "object": out.object}
        return out, self.condition(feats, emotions, (out.scene_embeds, out.object_embeds))

    def condition(
        self,
        feats: dict[str, torch.Tensor | None],
        emotions: torch.Tensor,
        attribute_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """c (B, Σ d_c) from features ``cls``, ``scene``, ``object`` (B, D) and the target emotions (B,);
        ``attribute_embeds`` are g_S(s), g_O(o) when already computed (else projected here)."""
        if not self.uses_queries:
            return self.normalize_condition(self.fusion.map_cls(feats["cls"]))
        if attribute_embeds is None:
            u = self.understanding
            attribute_embeds = (
                F.normalize(u.scene_proj(feats["scene"]), dim=-1),
                F.normalize(u.object_proj(feats["object"]), dim=-1),
            )
        alpha_s, alpha_o = self.alphas(*attribute_embeds, emotions)
        return self.normalize_condition(self.fusion(feats["cls"], feats["scene"], feats["object"], alpha_s, alpha_o))

    def normalize_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """Each text encoder's part of c (B, Σ d_c) rescaled to ``condition_norms`` (unchanged without them)."""
        norms = self.hparams.get("condition_norms")
        if norms is None:
            return condition
        parts = condition.split(self.hparams["condition_dims"], dim=-1)
        return torch.cat([F.normalize(p, dim=-1) * n for p, n in zip(parts, norms)], dim=-1)

    def condition_logits(self, condition: torch.Tensor) -> torch.Tensor:
        """Emotion logits of c (B, K) for the ``ce`` condition loss: c's own head (when Σ d_c ≠ D), else the
        stage-1 head frozen as it was when joint training began."""
        if self.condition_head is not None:
            return self.condition_head(condition)
        return F.linear(condition, self.frozen_head_weight, self.frozen_head_bias)

    # ----------------------------------------------------------------------------------------------------------
    def set_emotion_space(self, space: dict[str, torch.Tensor]) -> None:
        """Stores :func:`~uniemo.models.fusion.emotion_space`'s output (``cls_mean`` … ``object_std``)."""
        for key, value in space.items():
            getattr(self, f"space_{key}").copy_(value)

    def has_emotion_space(self) -> bool:
        return bool(self.space_cls_std.abs().sum() > 0)

    def sample_features(
        self, emotions: torch.Tensor, generator: torch.Generator | None = None, diversity: float = 1.0
    ) -> dict:
        """One (cls, s, o) per requested emotion (B,) → name → (B, D): a real training image's features from the
        bank (``space_bank``), else ~ N(μ_e, (diversity·σ_e)²) (METHOD §5 at diversity 1); diversity 0 always
        gives the emotion's mean."""
        names = SPACE_FEATURES if self.uses_queries else ("cls",)
        space = {}
        for name in names:
            space[f"{name}_mean"] = getattr(self, f"space_{name}_mean")
            space[f"{name}_std"] = getattr(self, f"space_{name}_std") * diversity
            if self.hparams.get("space_bank") and diversity > 0:
                space[f"{name}_bank"] = getattr(self, f"space_{name}_bank")
        return sample_emotion_space(space, emotions, generator)

    def architecture(self) -> dict[str, Any]:
        return {"understanding": self.understanding.architecture(), **self.hparams}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> UniEmoModel:
        arch = dict(arch)
        understanding = ExpertQueryCLIP.from_architecture(arch.pop("understanding"))
        return cls(understanding, **arch)


class PromptEncoder:
    """A Stable Diffusion pipeline's text side with the placeholder: SD 1.x/2.x (one text encoder, the last
    hidden state) or SDXL (two encoders, their penultimate hidden states concatenated, and the second's pooled
    projection). c is split per encoder (:meth:`EmotionFusion.split`), each part replaces the placeholder's
    input embedding in its encoder.

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (its text encoders stay frozen).
        placeholder: the placeholder's text, added to each tokenizer.
    """

    def __init__(self, pipe: Any, placeholder: str = "<emotion>") -> None:
        self.is_xl = getattr(pipe, "text_encoder_2", None) is not None
        pairs = [(pipe.text_encoder, pipe.tokenizer)]
        if self.is_xl:
            pairs.append((pipe.text_encoder_2, pipe.tokenizer_2))
        self.injectors = [PlaceholderInjector(enc, tok, placeholder) for enc, tok in pairs]
        self.condition_dims = [enc.get_input_embeddings().embedding_dim for enc, _ in pairs]
        self.placeholder = placeholder

    def _ids(self, injector: PlaceholderInjector, prompts: Sequence[str], with_placeholder: bool) -> torch.Tensor:
        if with_placeholder:
            return injector.tokenize(prompts)
        tok = injector.tokenizer
        return tok(list(prompts), padding="max_length", truncation=True, return_tensors="pt").input_ids

    def encode(self, prompts: Sequence[str], condition: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning for ``prompts``; with ``condition`` (B, Σ d_c) every prompt must hold the
        placeholder once and c takes its place.

        Returns:
            ``prompt_embeds`` (B, L, d_ctx) and, for SDXL, ``pooled_prompt_embeds`` (B, d_pool).
        """
        parts = (
            list(condition.split(self.condition_dims, dim=-1))
            if condition is not None
            else [None] * len(self.injectors)
        )
        hidden, pooled = [], None
        for injector, part in zip(self.injectors, parts):
            encoder = injector.text_encoder
            device = encoder.device
            ids = self._ids(injector, prompts, part is not None).to(device)
            if part is None:
                out = encoder(input_ids=ids, output_hidden_states=self.is_xl)
            else:
                with injector.inject(ids, part):
                    out = encoder(input_ids=ids, output_hidden_states=self.is_xl)
            hidden.append(out.hidden_states[-2] if self.is_xl else out[0])
            if self.is_xl:
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        result = {"prompt_embeds": torch.cat(hidden, dim=-1)}
        if self.is_xl:
            result["pooled_prompt_embeds"] = pooled
        return result


def sdxl_time_ids(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning (original size, crop top-left, target size) for square ``size`` images (B, 6)."""
    ids = torch.tensor([size, size, 0, 0, size, size], dtype=dtype, device=device)
    return ids.expand(batch, 6)
