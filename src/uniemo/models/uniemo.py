"""The unified model (METHOD §3–§5): the understanding network, α, the mappers and the emotion space; its
training forward returns :class:`JointOutput` (the understanding output, α_S, α_O and c).

Shape legend:
    B    batch size
    D    vision width of the understanding model
    K    emotions
    V_s / V_o  scene / object vocabulary sizes
    d_c  token-embedding width of each text encoder (c has Σ d_c entries)
    L    prompt tokens (77)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn

from uniemo.checkpoint import JOINT_KIND, atomic_directory, load_weights, read_meta, resolve_checkpoint, save_model
from uniemo.errors import CheckpointError
from uniemo.models.alpha import attribute_distribution, correlation_coefficient
from uniemo.models.architecture import AlphaMode, ConditionFeatures, UniEmoConfig
from uniemo.models.emotion_space import sample_emotion_space
from uniemo.models.mappers import ConditionMappers
from uniemo.models.understanding import ExpertQueryCLIP

ALPHA_MODES = get_args(AlphaMode)
SPACE_FEATURES = ("cls", "scene", "object")


@dataclass
class JointOutput:
    """The training forward of :class:`UniEmoModel` on a batch of images and their emotions.

    Attributes:
        understanding: the :class:`~uniemo.models.understanding.UnderstandingOutput` (logits, cls, s, o, g_S(s),
            g_O(o)) that L_U reads.
        alpha_scene / alpha_object: (B,) α_S, α_O (detached; ones without queries or with ``alpha="none"``).
        condition: (B, Σ d_c) c, the placeholder's embedding that L(θ) (and L_cond) read.
    """

    understanding: Any
    alpha_scene: torch.Tensor
    alpha_object: torch.Tensor
    condition: torch.Tensor


class UniEmoModel(nn.Module):
    """Understanding + generation conditioning: c = M_E(cls) + α_S·M_S(s) + α_O·M_O(o).

    Buffers (saved with the weights): ``prior_scene`` (V_s, K) and ``prior_object`` (V_o, K), P(e | a); the
    emotion space ``space_{cls,scene,object}_{mean,std}`` (K, D), filled after joint training.

    Args:
        understanding: the stage-1 network.
        config: what this model adds (:class:`~uniemo.models.architecture.UniEmoConfig`: the condition widths, the
            mappers' width, α's mode, the condition head, τ, the feature bank, the condition norms).
    """

    def __init__(self, understanding: ExpertQueryCLIP, config: UniEmoConfig) -> None:
        super().__init__()
        if config.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {config.alpha!r}")
        if config.condition_features not in get_args(ConditionFeatures):
            raise ValueError(f"condition_features must be 'all' or 'class_token', got {config.condition_features!r}")
        if config.condition_norms is not None and len(config.condition_norms) != len(config.condition_dims):
            raise ValueError(
                f"one condition norm per text encoder: {len(config.condition_dims)}, got {config.condition_norms}"
            )
        self.config = config
        self.understanding = understanding
        dim = understanding.vision.config.hidden_size
        k = understanding.num_classes
        self.mappers = ConditionMappers(dim, config.condition_dims, config.mapper_hidden)
        self.alpha_mode = config.alpha
        self.condition_head = nn.Linear(sum(config.condition_dims), k) if config.condition_head else None
        # The `ce` condition loss reads c with the stage-1 head as it was when joint training began (frozen).
        self.register_buffer("frozen_head_weight", understanding.head.weight.detach().clone())
        self.register_buffer("frozen_head_bias", understanding.head.bias.detach().clone())
        if config.alpha == "mean":  # (α_S, α_O): soft α averaged over the training set, filled by joint training
            self.register_buffer("alpha_mean", torch.ones(2))
        self.register_buffer("prior_scene", torch.full((understanding.scene_vocab_embeds.shape[0], k), 1.0 / k))
        self.register_buffer("prior_object", torch.full((understanding.object_vocab_embeds.shape[0], k), 1.0 / k))
        for name in SPACE_FEATURES:
            self.register_buffer(f"space_{name}_mean", torch.zeros(k, dim))
            self.register_buffer(f"space_{name}_std", torch.zeros(k, dim))
            if config.space_bank:
                self.register_buffer(f"space_{name}_bank", torch.zeros(k, config.space_bank, dim))

    @property
    def uses_queries(self) -> bool:
        """Whether c reads the expert queries (a model with queries and ``condition_features="all"``)."""
        return self.understanding.query_mode != "none" and self.config.condition_features == "all"

    def generation_parameters(self) -> list[nn.Parameter]:
        """The mappers (and the condition head): the parameters only joint training creates."""
        params = list(self.mappers.parameters())
        return params + (list(self.condition_head.parameters()) if self.condition_head is not None else [])

    # ----------------------------------------------------------------------------------------------------------
    def alphas(
        self,
        scene_embeds: torch.Tensor | None,
        object_embeds: torch.Tensor | None,
        emotions: torch.Tensor,
        mode: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_S, α_O), each (B,), detached: Σ_a π(a)·P(e* | a) (METHOD §3); ones with ``alpha="none"``, the stored
        training-set mean with ``alpha="mean"``. ``mode`` overrides the model's (``soft`` fills that mean)."""
        mode = mode or self.alpha_mode
        ones = torch.ones(len(emotions), device=emotions.device)
        if mode == "none" or not self.uses_queries:
            return ones, ones
        if mode == "mean":
            return ones * self.alpha_mean[0], ones * self.alpha_mean[1]
        tau = self.config.temperature
        out = []
        for embeds, vocab, prior in (
            (scene_embeds, self.understanding.scene_vocab_embeds, self.prior_scene),
            (object_embeds, self.understanding.object_vocab_embeds, self.prior_object),
        ):
            if embeds is None or vocab.shape[0] == 0:
                out.append(ones)
                continue
            pi = attribute_distribution(embeds.detach(), vocab, tau)  # (B, V)
            out.append(correlation_coefficient(pi, prior, emotions, mode))
        return out[0], out[1]

    def forward(self, pixel_values: torch.Tensor, emotions: torch.Tensor) -> JointOutput:
        """Training forward of images (B, 3, S, S) and their emotions (B,): :class:`JointOutput`."""
        out = self.understanding(pixel_values)
        feats = {"cls": out.cls, "scene": out.scene, "object": out.object}
        return JointOutput(out, *self._condition(feats, emotions, (out.scene_embeds, out.object_embeds)))

    def condition(self, feats: dict[str, torch.Tensor | None], emotions: torch.Tensor) -> torch.Tensor:
        """c (B, Σ d_c) from features ``cls``, ``scene``, ``object`` (B, D) (an image's own, or sampled from the
        emotion space) and the target emotions (B,)."""
        embeds = None
        if self.uses_queries:
            embeds = self.understanding.attribute_embeds(feats["scene"], feats["object"])
        return self._condition(feats, emotions, embeds)[2]

    def _condition(
        self,
        feats: dict[str, torch.Tensor | None],
        emotions: torch.Tensor,
        attribute_embeds: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(α_S, α_O, c) from the features, the emotions and g_S(s), g_O(o)."""
        if not self.uses_queries:
            ones = torch.ones(len(emotions), device=emotions.device)
            return ones, ones, self.normalize_condition(self.mappers.map_cls(feats["cls"]))
        alpha_s, alpha_o = self.alphas(*attribute_embeds, emotions)
        c = self.mappers(feats["cls"], feats["scene"], feats["object"], alpha_s, alpha_o)
        return alpha_s, alpha_o, self.normalize_condition(c)

    def normalize_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """Each text encoder's part of c (B, Σ d_c) rescaled to ``condition_norms`` (unchanged without them)."""
        norms = self.config.condition_norms
        if norms is None:
            return condition
        parts = condition.split(list(self.config.condition_dims), dim=-1)
        return torch.cat([F.normalize(p, dim=-1) * n for p, n in zip(parts, norms)], dim=-1)

    def condition_logits(self, condition: torch.Tensor) -> torch.Tensor:
        """Emotion logits of c (B, K) for the ``ce`` condition loss: c's own head (when Σ d_c ≠ D), else the
        stage-1 head frozen as it was when joint training began."""
        if self.condition_head is not None:
            return self.condition_head(condition)
        return F.linear(condition, self.frozen_head_weight, self.frozen_head_bias)

    # ----------------------------------------------------------------------------------------------------------
    def set_emotion_space(self, space: dict[str, torch.Tensor]) -> None:
        """Stores :func:`~uniemo.models.emotion_space.emotion_space`'s output (``cls_mean`` … ``object_std``)."""
        for key, value in space.items():
            getattr(self, f"space_{key}").copy_(value)

    def has_emotion_space(self) -> bool:
        return bool(self.space_cls_std.abs().sum() > 0)

    def sample_features(
        self, emotions: torch.Tensor, generator: torch.Generator | None = None, diversity: float = 1.0
    ) -> dict:
        """One (cls, s, o) per requested emotion (B,) → name → (B, D): ~ N(μ_e, (diversity·σ_e)²) (METHOD §5 at
        diversity 1), or with a bank (``space_bank``) a real training image's features x moved towards the mean,
        μ_e + diversity·(x − μ_e); diversity 0 always gives the emotion's mean."""
        names = SPACE_FEATURES if self.uses_queries else ("cls",)
        space = {}
        for name in names:
            space[f"{name}_mean"] = getattr(self, f"space_{name}_mean")
            space[f"{name}_std"] = getattr(self, f"space_{name}_std") * diversity
            if self.config.space_bank:
                space[f"{name}_bank"] = getattr(self, f"space_{name}_bank")
        sample = sample_emotion_space(space, emotions, generator)
        if not self.config.space_bank:
            return sample
        return {name: torch.lerp(space[f"{name}_mean"][emotions], x, diversity) for name, x in sample.items()}

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this model without weights (``model.json``'s ``architecture``)."""
        return {"understanding": self.understanding.architecture(), **self.config.to_dict()}

    @staticmethod
    def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors under this version's names (:func:`~uniemo.checkpoint.load_weights` calls it):
        the mappers were ``fusion.*`` until the model was split by mechanism."""
        return {("mappers." + k[len("fusion.") :] if k.startswith("fusion.") else k): v for k, v in state.items()}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> UniEmoModel:
        """Builds an (untrained) model from :meth:`architecture`'s dict."""
        arch = dict(arch)
        understanding = ExpertQueryCLIP.from_architecture(arch.pop("understanding"))
        return cls(understanding, UniEmoConfig.from_dict(arch))

    @classmethod
    def load(cls, path: str | Path) -> tuple[UniEmoModel, dict[str, Any]]:
        """The model of a joint checkpoint (or run directory) and its ``model.json``.

        Raises:
            CheckpointError: missing files, another kind or architecture, or pickle weights.
        """
        directory = resolve_checkpoint(path)
        meta = read_meta(directory, JOINT_KIND)
        try:
            model = cls.from_architecture(meta["architecture"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}/model.json does not describe a valid UniEmo model ({err})") from None
        load_weights(directory, model)
        return model, meta

    @classmethod
    def from_pretrained(cls, path: str | Path) -> UniEmoModel:
        """The model of a joint checkpoint (see :meth:`load`), in eval mode; ``UniEmoPipeline`` adds the diffusion
        model it conditions."""
        return cls.load(path)[0].eval()

    def save_pretrained(self, directory: str | Path, **meta: Any) -> None:
        """Writes a joint checkpoint directory of this model, atomically; ``meta``: further ``model.json`` entries
        (``classes``, ``diffusion``, ``placeholder``, … as ``uniemo train joint`` writes them)."""
        with atomic_directory(directory) as tmp:
            save_model(tmp, self, {"kind": JOINT_KIND, **meta, "architecture": self.architecture()})
