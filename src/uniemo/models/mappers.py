"""The mappers M_E, M_S, M_O that turn the emotion representation and the expert queries into the condition c
(METHOD §4).

Shape legend:
    B    batch size
    D    vision width of the understanding model
    d_c  token-embedding width of a diffusion model's text encoder (768 for SD 1.5; SDXL: 768 and 1280)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Mapper(nn.Sequential):
    """The paper's two-layer MLP: Linear(D, hidden) → ReLU → Linear(hidden, d_c)."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 1024) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class ConditionMappers(nn.Module):
    """M_E, M_S, M_O and c = M_E(cls) + α_S·M_S(s) + α_O·M_O(o).

    Args:
        dim: D.
        condition_dims: d_c of each text encoder the condition enters (SD 1.5: ``(768,)``; SDXL:
            ``(768, 1280)``); each mapper produces all of them at once (the prompt encoder splits c per encoder).
        hidden: the mappers' hidden width.
    """

    def __init__(self, dim: int, condition_dims: Sequence[int] = (768,), hidden: int = 1024) -> None:
        super().__init__()
        self.condition_dims = tuple(condition_dims)
        total = sum(self.condition_dims)
        self.map_cls, self.map_scene, self.map_object = (Mapper(dim, total, hidden) for _ in range(3))

    def forward(
        self,
        cls: torch.Tensor,
        scene: torch.Tensor,
        obj: torch.Tensor,
        alpha_scene: torch.Tensor,
        alpha_object: torch.Tensor,
    ) -> torch.Tensor:
        """cls, scene, obj (B, D); alpha_* (B,) → c (B, Σ d_c)."""
        c = self.map_cls(cls)
        c = c + alpha_scene[:, None].to(c.dtype) * self.map_scene(scene)
        return c + alpha_object[:, None].to(c.dtype) * self.map_object(obj)
