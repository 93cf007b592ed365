"""LPIPS (Zhang et al. 2018, "lin" v0.1) with the AlexNet backbone, in plain torch (no torchvision).

The module layout keeps the original weight files loadable as they are: :class:`AlexNetFeatures` holds
torchvision's ``alexnet().features`` layers at the same indices (its ``features.*`` keys load directly), and the
1×1 "lin" layers are named like lpips' (``lin0.model.1.weight`` … ``lin4.model.1.weight``).

Symbols: B batch, H × W image size, C_l channels of layer l (64, 192, 384, 256, 256), H_l × W_l its size.
"""

from __future__ import annotations

import importlib.util
import logging
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uniemo.errors import CheckpointError, MetricNetworkError, UniEmoError

logger = logging.getLogger(__name__)

#: torchvision's ImageNet AlexNet file name, as torch hub caches it.
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
#: Channels of the five ReLU outputs LPIPS compares.
ALEXNET_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)
#: LPIPS v0.1 input scaling (the ImageNet mean and std expressed for inputs in [-1, 1]).
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
#: lpips' epsilon in the per-pixel unit normalisation of the features.
NORM_EPS = 1e-10


class AlexNetFeatures(nn.Module):
    """The convolutional part of AlexNet, returning the five ReLU outputs (relu1 … relu5).

    ``features`` has torchvision's indices: conv 0, 3, 6, 8, 10; ReLU 1, 4, 7, 9, 11; max-pool 2, 5 (its final
    max-pool 12 is not needed and holds no weights).
    """

    #: Indices in ``features`` whose outputs are returned.
    RELU_INDICES: tuple[int, ...] = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Runs the layers on (B, 3, H, W) normalised images; returns the five (B, C_l, H_l, W_l) ReLU outputs."""
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.RELU_INDICES:
                outputs.append(x)
        return outputs


class _LinLayer(nn.Module):
    """A 1×1 convolution to one channel without bias, at ``model.1`` as in lpips' weight files.

    lpips puts a Dropout at ``model.0``; an Identity takes its place here, so a distance never depends on the
    module's train/eval mode (dropout only mattered when training the lin layers).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divides each spatial position's feature vector by its L2 norm (plus lpips' epsilon)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)


class LPIPS(nn.Module):
    """The LPIPS distance with AlexNet features and learned per-channel weights ("lin", v0.1).

    distance(x, y) = Σ_l mean_{h,w} w_l · (n_l(x) − n_l(y))², with n_l the unit-normalised layer-l features of the
    scaled images and w_l the lin layer's weights. Build with :func:`load_lpips` to get the pretrained weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = AlexNetFeatures()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_LinLayer(c) for c in ALEXNET_CHANNELS)

    @property
    def lins(self) -> list[_LinLayer]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS between two batches of images.

        Args:
            x: (B, 3, H, W) images in [-1, 1].
            y: (B, 3, H, W) images in [-1, 1].

        Returns:
            (B,) distances; exactly 0 where x and y are identical.
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise UniEmoError(f"LPIPS needs two (B, 3, H, W) batches of one shape, got {x.shape} and {y.shape}")
        # Each batch runs through the network on its own, so identical images give bit-identical features.
        features_x = self.net((x - self.shift) / self.scale)
        features_y = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, features_x, features_y, strict=True):
            diff = (_unit_normalise(fx) - _unit_normalise(fy)).pow(2)  # (B, C_l, H_l, W_l)
            total = total + lin(diff).mean(dim=(1, 2, 3))  # lin: (B, 1, H_l, W_l) → (B,)
        return total


# ------------------------------------------------------------------------------------------------------ loading
def default_alexnet_path() -> Path:
    """Where torch hub (and so torchvision) caches ImageNet AlexNet weights on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def default_linear_path() -> Path:
    """lpips' ``weights/v0.1/alex.pth``: in the installed lpips package, else where ``pip install lpips`` puts it.

    The package is located with ``importlib.util.find_spec`` and not imported (importing lpips needs torchvision).
    """
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.submodule_search_locations:
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    else:
        package_dir = Path(sysconfig.get_paths()["purelib"]) / "lpips"
    return package_dir / "weights" / "v0.1" / "alex.pth"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads tensors from a .safetensors file or, without unpickling code, a torch file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read weights from {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Copies ``state[prefix + key]`` into each of ``module``'s tensors, checking every key and shape first."""
    expected = module.state_dict()
    missing = [prefix + k for k in expected if prefix + k not in state]
    wrong = [
        f"{prefix + k} {tuple(state[prefix + k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if prefix + k in state and state[prefix + k].shape != v.shape
    ]
    if missing or wrong:
        detail = "; ".join(([f"missing {missing}"] if missing else []) + ([f"wrong shape {wrong}"] if wrong else []))
        raise CheckpointError(f"{path} does not hold the expected LPIPS AlexNet weights: {detail}")
    module.load_state_dict({k: state[prefix + k] for k in expected})


def load_lpips(
    alexnet_weights: str | Path | None = None,
    linear_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> LPIPS:
    """Builds LPIPS (AlexNet, lin v0.1) with pretrained weights, in eval mode and without gradients.

    Args:
        alexnet_weights: torchvision's ImageNet AlexNet state dict (``features.*`` keys are used, the classifier
            is ignored); default :func:`default_alexnet_path`.
        linear_weights: lpips' ``weights/v0.1/alex.pth`` (keys ``lin0.model.1.weight`` …); default
            :func:`default_linear_path`.
        device: where to put the network.

    Returns:
        The network.

    Raises:
        MetricNetworkError: a weight file is missing (the message names the file, where to put it, and
            ``--skip lpips``).
        CheckpointError: a file holds other keys or shapes.
    """
    alexnet_path = Path(alexnet_weights) if alexnet_weights is not None else default_alexnet_path()
    linear_path = Path(linear_weights) if linear_weights is not None else default_linear_path()
    if not alexnet_path.is_file():
        raise MetricNetworkError(
            f"LPIPS needs torchvision's ImageNet AlexNet weights ({ALEXNET_FILE}): put the file at {alexnet_path}, "
            "or run with --skip lpips"
        )
    if not linear_path.is_file():
        raise MetricNetworkError(
            f"LPIPS needs lpips' linear weights (weights/v0.1/alex.pth of the lpips package): put the file at "
            f"{linear_path} (`pip install --no-deps lpips` does), or run with --skip lpips"
        )
    network = LPIPS()
    _load_into(network.net, _read_state_dict(alexnet_path), alexnet_path)
    linear_state = _read_state_dict(linear_path)
    for index, lin in enumerate(network.lins):
        _load_into(lin, linear_state, linear_path, prefix=f"lin{index}.")
    logger.info("LPIPS: AlexNet from %s, linear layers from %s", alexnet_path, linear_path)
    return network.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_distances(
    network: LPIPS, images_a: torch.Tensor, images_b: torch.Tensor, batch_size: int = 32
) -> np.ndarray:
    """LPIPS between images_a[i] and images_b[i] for every i, in batches on the network's device.

    Args:
        network: an :class:`LPIPS` (from :func:`load_lpips`).
        images_a: (N, 3, H, W) images in [-1, 1] (see :func:`uniemo.metrics.generation.to_signed_pixels`).
        images_b: (N, 3, H, W) images in [-1, 1].
        batch_size: pairs per forward pass.

    Returns:
        (N,) float64 distances.
    """
    if images_a.shape != images_b.shape or images_a.dim() != 4:
        raise UniEmoError(f"LPIPS needs two (N, 3, H, W) sets of one shape, got {images_a.shape}, {images_b.shape}")
    for images in (images_a, images_b):
        if images.numel() and (images.min() < -1.001 or images.max() > 1.001):
            raise UniEmoError(
                f"LPIPS expects images in [-1, 1], got values in [{images.min():.3g}, {images.max():.3g}]: "
                "convert them with to_signed_pixels"
            )
    device = next(network.parameters()).device
    out = [
        network(images_a[i : i + batch_size].to(device), images_b[i : i + batch_size].to(device)).double().cpu()
        for i in range(0, len(images_a), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float64)
