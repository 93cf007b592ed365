"""The understanding model: a CLIP ViT with scene and object expert queries (METHOD §2, paper §III-A).

Shape legend:
    B   batch size
    P   patch tokens (grid² of the vision tower)
    D   vision width
    n_s scene queries, n_o object queries
    d_t width of the attribute text embeddings (the CLIP text tower's projection)
    V_s / V_o  scene / object vocabulary sizes
    K   emotion classes

Token order inside the encoder: ``[cls, patches, scene queries, object queries]``. The scene queries enter at
layer 0; after layer L₁ an Interactive Block refines them against the patch tokens and β mixes the result in;
the object queries enter after L₁ (``multi_stage``) or at layer 0 (``single_step``) and are refined after L₂.
With ``query_mode="none"`` no token is added and the model is the plain ``CLIPVisionModel`` plus a head.

File order (timm's): blocks, output type, model, checkpoint helpers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from uniemo.checkpoint import (
    JOINT_KIND,
    UNDERSTANDING_KIND,
    atomic_directory,
    load_weights,
    read_meta,
    resolve_checkpoint,
    save_model,
)
from uniemo.errors import CheckpointError
from uniemo.models.architecture import ExpertQueryConfig, QueryMode

QUERY_MODES: tuple[QueryMode, ...] = get_args(QueryMode)


class InteractiveBlockLayer(nn.Module):
    """One IB layer: Q ← Q + A(LN(Q), LN(T)), then Q ← Q + F(LN(Q)) (paper eq. 2, pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, queries: torch.Tensor, patches: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, n, D), patches (B, P, D) → queries (B, n, D), attention (B, n, P) or None."""
        kv = self.norm_kv(patches)
        attended, weights = self.attn(
            self.norm_q(queries), kv, kv, need_weights=need_weights, average_attn_weights=True
        )
        queries = queries + attended
        queries = queries + self.mlp(self.norm_mlp(queries))
        return queries, weights


class InteractiveBlock(nn.Module):
    """A small transformer (default 2 layers) in which expert queries cross-attend to patch tokens."""

    def __init__(self, dim: int, num_layers: int = 2, num_heads: int | None = None) -> None:
        super().__init__()
        heads = num_heads or max(1, dim // 64)
        self.layers = nn.ModuleList(InteractiveBlockLayer(dim, heads) for _ in range(num_layers))

    def forward(
        self, queries: torch.Tensor, patches: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, n, D), patches (B, P, D) → refined queries Q̃ (B, n, D), last layer's attention (B, n, P)."""
        weights = None
        for layer in self.layers:
            queries, weights = layer(queries, patches, need_weights=need_weights)
        return queries, weights


@dataclass
class UnderstandingOutput:
    """What :class:`ExpertQueryCLIP` returns.

    Attributes:
        logits: (B, K) emotion logits.
        cls: (B, D) the post-LayerNorm class token (the emotion representation).
        scene: (B, D) mean of the modulated scene queries Q̂ after L₁, or None with ``query_mode="none"``.
        object: (B, D) mean of the modulated object queries Q̂ after L₂, or None.
        scene_embeds: (B, d_t) L2-normalised g_S(scene), in the attribute text space, or None.
        object_embeds: (B, d_t) L2-normalised g_O(object), or None.
        scene_attention: (B, n_s, P) the scene IB's last cross-attention, when asked for.
        object_attention: (B, n_o, P) the object IB's last cross-attention, when asked for.
    """

    logits: torch.Tensor
    cls: torch.Tensor
    scene: torch.Tensor | None = None
    object: torch.Tensor | None = None
    scene_embeds: torch.Tensor | None = None
    object_embeds: torch.Tensor | None = None
    scene_attention: torch.Tensor | None = None
    object_attention: torch.Tensor | None = None


def default_stage_layers(num_layers: int) -> tuple[int, int]:
    """L₁ = round(N/3), L₂ = round(2N/3) (METHOD §2; ViT-B: 4, 8; ViT-L: 8, 16)."""
    return max(1, round(num_layers / 3)), max(2, round(2 * num_layers / 3))


class ExpertQueryCLIP(nn.Module):
    """CLIP vision tower + scene/object expert queries + Interactive Blocks + emotion head.

    Args:
        vision: a ``transformers.CLIPVisionModel`` (pretrained or random).
        config: the expert-query architecture (:class:`~uniemo.models.architecture.ExpertQueryConfig`); the model keeps
            it as ``config`` with L₁ and L₂ resolved.
        gradient_checkpointing: recompute encoder layers in backward to save memory.

    Build one with :func:`uniemo.models.factory.create_model` (a named preset or a checkpoint), or load a
    checkpoint with :meth:`from_pretrained`.
    """

    def __init__(self, vision: Any, config: ExpertQueryConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if config.query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {config.query_mode!r}")
        if config.num_scene_queries < 0 or config.num_object_queries < 0 or config.ib_layers < 0:
            raise ValueError("num_scene_queries, num_object_queries and ib_layers must be ≥ 0")
        self.vision = vision
        self.gradient_checkpointing = gradient_checkpointing
        dim = vision.config.hidden_size
        num_layers = len(vision.encoder.layers)
        default_l1, default_l2 = default_stage_layers(num_layers)
        config = dataclasses.replace(
            config, scene_layer=config.scene_layer or default_l1, object_layer=config.object_layer or default_l2
        )
        if config.query_mode != "none" and not 1 <= config.scene_layer < config.object_layer <= num_layers:
            raise ValueError(
                f"need 1 <= scene_layer < object_layer <= {num_layers}, got L1={config.scene_layer}, "
                f"L2={config.object_layer}"
            )
        self.config = config
        self.query_mode = config.query_mode
        self.scene_layer, self.object_layer = config.scene_layer, config.object_layer
        self.num_classes, self.attribute_dim = config.num_classes, config.attribute_dim
        if config.query_mode != "none":
            self.scene_queries = nn.Parameter(torch.empty(config.num_scene_queries, dim))
            self.object_queries = nn.Parameter(torch.empty(config.num_object_queries, dim))
            nn.init.trunc_normal_(self.scene_queries, std=0.02)
            nn.init.trunc_normal_(self.object_queries, std=0.02)
            self.scene_ib = InteractiveBlock(dim, config.ib_layers)
            self.object_ib = InteractiveBlock(dim, config.ib_layers)
            self.scene_beta = nn.Parameter(torch.tensor(float(config.beta_init)))
            self.object_beta = nn.Parameter(torch.tensor(float(config.beta_init)))
            self.scene_proj = nn.Linear(dim, config.attribute_dim, bias=False)
            self.object_proj = nn.Linear(dim, config.attribute_dim, bias=False)
        self.head = nn.Linear(dim, config.num_classes)
        self.register_buffer("scene_vocab_embeds", torch.zeros(config.num_scene_names, config.attribute_dim))
        self.register_buffer("object_vocab_embeds", torch.zeros(config.num_object_names, config.attribute_dim))

    # ----------------------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The pretrained vision tower's parameters (they take ``lr × backbone_lr_scale``)."""
        return list(self.vision.parameters())

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW leaves undecayed (timm's convention): expert queries, β, norms, biases."""
        return {name for name, p in self.named_parameters() if p.ndim < 2 or name.endswith("_queries")}

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters UniEmo adds: queries, Interactive Blocks, β, projections, head."""
        backbone = {id(p) for p in self.vision.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    def _run_layer(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            out = checkpoint(layer, hidden, None, use_reentrant=False)
        else:
            out = layer(hidden, None)
        return out[0] if isinstance(out, tuple) else out

    def _refine(
        self, hidden: torch.Tensor, start: int, count: int, num_patches: int, which: str, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Runs one Interactive Block on the query tokens at ``hidden[:, start:start+count]`` (eq. 2–3)."""
        block = self.scene_ib if which == "scene" else self.object_ib
        beta = self.scene_beta if which == "scene" else self.object_beta
        queries = hidden[:, start : start + count]  # (B, n, D)
        patches = hidden[:, 1 : 1 + num_patches]  # (B, P, D)
        refined, weights = block(queries, patches, need_weights=need_weights)  # Q̃ (B, n, D)
        modulated = queries + beta * refined  # Q̂ = Q + β·Q̃ (B, n, D)
        hidden = torch.cat([hidden[:, :start], modulated, hidden[:, start + count :]], dim=1)
        return hidden, modulated, weights

    def forward_features(self, pixel_values: torch.Tensor, need_attention: bool = False) -> dict[str, Any]:
        """Runs the hierarchical chain.

        Args:
            pixel_values: (B, 3, H, W) CLIP-normalised images.
            need_attention: also return the IB cross-attention maps.

        Returns:
            dict with ``cls`` (B, D), and for query modes ``scene``/``object`` (B, D) and, when asked,
            ``scene_attention`` (B, n_s, P) / ``object_attention`` (B, n_o, P).
        """
        hidden = self.vision.embeddings(pixel_values)  # (B, 1+P, D)
        hidden = self.vision.pre_layrnorm(hidden)
        batch, num_patches = hidden.shape[0], hidden.shape[1] - 1
        feats: dict[str, Any] = {}
        use_queries = self.query_mode != "none"
        if use_queries:
            n_s, n_o = self.scene_queries.shape[0], self.object_queries.shape[0]
            scene_q = self.scene_queries.to(hidden.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n_s, D)
            object_q = self.object_queries.to(hidden.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, n_o, D)
            hidden = torch.cat([hidden, scene_q], dim=1)  # (B, 1+P+n_s, D)
            if self.query_mode == "single_step":
                hidden = torch.cat([hidden, object_q], dim=1)  # (B, 1+P+n_s+n_o, D)
            scene_start = 1 + num_patches
            object_start = scene_start + n_s
        for index, layer in enumerate(self.vision.encoder.layers, start=1):
            hidden = self._run_layer(layer, hidden)
            if not use_queries:
                continue
            if index == self.scene_layer:
                hidden, scene_hat, attn = self._refine(hidden, scene_start, n_s, num_patches, "scene", need_attention)
                feats["scene"] = scene_hat.mean(dim=1)  # (B, D)
                feats["scene_attention"] = attn
                if self.query_mode == "multi_stage":
                    hidden = torch.cat([hidden, object_q], dim=1)  # (B, 1+P+n_s+n_o, D)
            if index == self.object_layer:
                hidden, obj_hat, attn = self._refine(hidden, object_start, n_o, num_patches, "object", need_attention)
                feats["object"] = obj_hat.mean(dim=1)  # (B, D)
                feats["object_attention"] = attn
        feats["cls"] = self.vision.post_layernorm(hidden[:, 0])  # (B, D)
        return feats

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        """cls (B, D) → logits (B, K)."""
        return self.head(cls)

    def attribute_embeds(self, scene: torch.Tensor, obj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g_S(s), g_O(o): the pooled scene / object queries (B, D) in the attribute text space (B, d_t), L2-normalised
        (what L_S / L_O compare with the names, and α reads)."""
        return F.normalize(self.scene_proj(scene), dim=-1), F.normalize(self.object_proj(obj), dim=-1)

    def forward(self, pixel_values: torch.Tensor, need_attention: bool = False) -> UnderstandingOutput:
        """pixel_values (B, 3, H, W) → :class:`UnderstandingOutput`."""
        feats = self.forward_features(pixel_values, need_attention=need_attention)
        out = UnderstandingOutput(logits=self.forward_head(feats["cls"]), cls=feats["cls"])
        if self.query_mode != "none":
            out.scene, out.object = feats["scene"], feats["object"]
            out.scene_embeds, out.object_embeds = self.attribute_embeds(out.scene, out.object)
            out.scene_attention = feats["scene_attention"]
            out.object_attention = feats["object_attention"]
        return out

    # ----------------------------------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this model without weights (``model.json``'s ``architecture``)."""
        return {"vision_config": self.vision.config.to_dict(), **self.config.to_dict()}

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> ExpertQueryCLIP:
        """Builds an (untrained) model from :meth:`architecture`'s dict."""
        from transformers import CLIPVisionConfig, CLIPVisionModel

        arch = dict(arch)
        vision = CLIPVisionModel(CLIPVisionConfig.from_dict(arch.pop("vision_config")))
        return cls(vision, ExpertQueryConfig.from_dict(arch))

    @classmethod
    def load(cls, path: str | Path) -> tuple[ExpertQueryCLIP, dict[str, Any]]:
        """The model of a stage-1 checkpoint, or the (jointly trained) understanding model of a joint one, with the
        checkpoint's ``model.json``. ``path``: a checkpoint directory or a run directory (its ``best/``).

        Raises:
            CheckpointError: missing files, another kind or architecture, or pickle weights.
        """
        directory = resolve_checkpoint(path)
        meta = read_meta(directory, (UNDERSTANDING_KIND, JOINT_KIND))
        joint = meta["kind"] == JOINT_KIND
        try:
            model = cls.from_architecture(meta["architecture"]["understanding"] if joint else meta["architecture"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}/model.json does not describe a valid model ({err})") from None
        load_weights(directory, model, prefix="understanding." if joint else "")
        return model, meta

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ExpertQueryCLIP:
        """The model of a checkpoint (see :meth:`load`), in eval mode."""
        return cls.load(path)[0].eval()

    def checkpoint_meta(self, classes: list[str] | None = None, **meta: Any) -> dict[str, Any]:
        """The ``model.json`` of a stage-1 checkpoint of this model. ``classes``: the emotion names (default ``"0"``
        … ``"K-1"``); ``meta``: further entries (``scene_vocab``, ``object_vocab``, ``extra``)."""
        classes = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        if len(classes) != self.num_classes:
            raise ValueError(f"{len(classes)} class names for a model of {self.num_classes} classes")
        info = {"kind": UNDERSTANDING_KIND, "architecture": self.architecture(), "classes": classes}
        return info | {"scene_vocab": [], "object_vocab": [], "extra": {}} | meta

    def save_pretrained(
        self, directory: str | Path, classes: list[str] | None = None, config_yaml: str | None = None, **meta: Any
    ) -> None:
        """Writes a stage-1 checkpoint directory (:meth:`checkpoint_meta`'s ``model.json``, the weights, the run's
        ``config.yaml`` when given) that :meth:`from_pretrained` and ``EmotionClassifier`` read, atomically."""
        with atomic_directory(directory) as tmp:
            save_model(tmp, self, self.checkpoint_meta(classes, **meta), config_yaml)
