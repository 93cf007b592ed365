"""The architecture of each model as one frozen dataclass (what ``model.json``'s ``architecture`` stores).

:class:`ExpertQueryConfig` is what :class:`~uniemo.models.understanding.ExpertQueryCLIP` adds to its CLIP vision
tower; :class:`UniEmoConfig` what :class:`~uniemo.models.uniemo.UniEmoModel` adds to the understanding model.
They are the one place these hyperparameters and their defaults are written: the run config
(:class:`uniemo.config.ModelConfig`) takes its defaults from here, and a checkpoint stores ``to_dict()``.
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

QueryMode = Literal["multi_stage", "single_step", "none"]
AlphaMode = Literal["soft", "hard", "none", "mean"]
ConditionFeatures = Literal["all", "class_token"]


def _checked(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(unknown)}")
    return values


@dataclass(frozen=True)
class ExpertQueryConfig:
    """The expert-query architecture on a CLIP vision tower (METHOD §2).

    Attributes:
        num_classes: K, the emotions of the head.
        attribute_dim: d_t, the width of the attribute text embeddings that L_S / L_O align to.
        query_mode: ``multi_stage`` (the method), ``single_step`` (both query sets enter at layer 0) or ``none``
            (plain CLIP and a head).
        num_scene_queries / num_object_queries: n_s, n_o.
        scene_layer / object_layer: L₁, L₂ (1-based layer after which each Interactive Block runs); None gives
            round(N/3) and round(2N/3) of the tower's N layers.
        ib_layers: layers of each Interactive Block.
        beta_init: initial value of the modulation scalars β.
        num_scene_names / num_object_names: V_s, V_o, the attribute vocabularies whose text embeddings the model
            stores (0 before stage-1 training has named them).
    """

    num_classes: int = 8
    attribute_dim: int = 512
    query_mode: QueryMode = "multi_stage"
    num_scene_queries: int = 32
    num_object_queries: int = 32
    scene_layer: int | None = None
    object_layer: int | None = None
    ib_layers: int = 2
    beta_init: float = 0.1
    num_scene_names: int = 0
    num_object_names: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExpertQueryConfig:
        """The config of a stored dict; an unknown key is a ValueError (a checkpoint of another architecture)."""
        return cls(**_checked(cls, values, "the expert-query architecture"))

    @classmethod
    def fields_of(cls, source: Any, **values: Any) -> ExpertQueryConfig:
        """The config from the same-named attributes of ``source`` (e.g. a run's ``model`` section), ``values``
        setting the others (``num_classes``, ``attribute_dim``, the vocabulary sizes)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in values and hasattr(source, f.name)]
        return cls(**{name: getattr(source, name) for name in names}, **values)


@dataclass(frozen=True)
class UniEmoConfig:
    """What the unified model adds to the understanding model (METHOD §3–§5).

    Attributes:
        condition_dims: d_c of each text encoder the condition c enters (SD 1.5: (768,); SDXL: (768, 1280)).
        mapper_hidden: the mappers' hidden width.
        alpha: ``soft``, ``hard``, ``none`` (α = 1: the "without α" ablation) or ``mean`` (soft α's mean over the
            training set, the same for every image and emotion: the control that tells α's weighting per emotion
            from its scaling of the queries' part of c).
        condition_head: give c its own linear emotion classifier (the ``ce`` condition loss when Σ d_c ≠ D).
        temperature: τ of π, the attribute distribution (stage 1's τ).
        space_bank: M real (cls, s, o) feature sets kept per emotion for sampling (0: the diagonal Gaussian).
        condition_norms: per text encoder, the norm its part of c is rescaled to; None: c as mapped.
        condition_features: ``all`` (c from the class token and both expert queries: the method) or ``class_token``
            (c = M_E(cls) alone: the paper's Table V "Cls" row, the control of the queries' part in generation).
    """

    condition_dims: tuple[int, ...]
    mapper_hidden: int = 1024
    alpha: AlphaMode = "soft"
    condition_head: bool = False
    temperature: float = 0.07
    space_bank: int = 0
    condition_norms: tuple[float, ...] | None = None
    condition_features: ConditionFeatures = "all"

    def __post_init__(self) -> None:  # lists from JSON → tuples, so that configs compare and hash alike
        object.__setattr__(self, "condition_dims", tuple(int(d) for d in self.condition_dims))
        if self.condition_norms is not None:
            object.__setattr__(self, "condition_norms", tuple(float(n) for n in self.condition_norms))

    def to_dict(self) -> dict[str, Any]:
        """The stored form; ``space_bank``, ``condition_norms`` and ``condition_features`` only when set, so that
        checkpoints keep the architecture dict they had before these options existed."""
        out = dataclasses.asdict(self)
        out["condition_dims"] = list(self.condition_dims)
        if not self.space_bank:
            del out["space_bank"]
        if self.condition_norms is None:
            del out["condition_norms"]
        else:
            out["condition_norms"] = list(self.condition_norms)
        if self.condition_features == "all":
            del out["condition_features"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UniEmoConfig:
        return cls(**_checked(cls, values, "the UniEmo architecture"))
