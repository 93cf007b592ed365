"""UniEmo: emotion understanding with expert queries, and emotion-conditioned generation with Stable Diffusion.

The public Python API is imported lazily, so ``import uniemo`` stays light:

    >>> from uniemo import EmotionClassifier, UniEmoPipeline
    >>> clf = EmotionClassifier.from_pretrained("demo-output/understanding")
    >>> images = UniEmoPipeline.from_pretrained("demo-output/joint")("awe", num_images=4).images
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "EmotionClassifier": "uniemo.pipelines.classifier",
    "Prediction": "uniemo.pipelines.classifier",
    "ExpertQueryCLIP": "uniemo.models.understanding",
    "UniEmoPipeline": "uniemo.pipelines.generation",
    "UniEmoModel": "uniemo.models.uniemo",
    "ExpertQueryConfig": "uniemo.models.architecture",
    "UniEmoConfig": "uniemo.models.architecture",
    "create_model": "uniemo.models.factory",
    "list_models": "uniemo.models.factory",
    "JointRunConfig": "uniemo.config",
    "train_joint": "uniemo.train.joint",
    "load_config": "uniemo.config",
    "train_understanding": "uniemo.train.understanding",
    "evaluate_understanding": "uniemo.evaluate",
    "open_dataset": "uniemo.data.datasets",
    "write_synthetic_dataset": "uniemo.data.synth",
    "EMOSET_EMOTIONS": "uniemo.constants",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uniemo' has no attribute {name!r}")
