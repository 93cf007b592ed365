"""Does the UNet use c? A conditioning diagnostic for joint training and for any finished joint checkpoint.

On a fixed held-out batch, with fixed VAE latents, noise and timesteps (``draws`` draws per image), L(θ) is
measured with each image's own condition c, with c shuffled across the batch, with the batch's mean c and with
the empty prompt (no placeholder at all). If the UNet reads c, the own c gives the lowest loss and the shuffled
c a clearly higher one; if the four are equal, nothing the mappers learned reaches the images. Beside them: ‖c‖
against the norms of the text encoder's token embeddings (c replaces one of them), and the gradient norm at c of
each weighted loss term of L_Joint (which term steers the mappers).

Shape legend:
    N    probe images
    C, h latent channels and side
    S    the understanding model's input side; R the diffusion resolution
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniemo.checkpoint import CONFIG_FILE, resolve_checkpoint
from uniemo.config import ConditioningProbeConfig, JointRunConfig, load_config
from uniemo.data.datasets import EmotionImageDataset, Sample, collate, open_dataset
from uniemo.data.transforms import ClipTransform
from uniemo.errors import DataError
from uniemo.pipelines.generation import UniEmoPipeline
from uniemo.train.objective import JointObjective

#: L(θ) variants of the diagnostic, in the order they are reported.
VARIANTS = ("own", "shuffled", "mean", "empty")


@dataclass
class ConditioningProbe:
    """A fixed held-out batch: ``pixel_values`` (N, 3, S, S), ``latents`` (N, C, h, h) (the VAE's mean, scaled),
    ``labels`` (N,), a fixed derangement ``permutation`` (N,) for the shuffled control, and the seed of the
    ``draws`` noise/timestep draws."""

    pixel_values: torch.Tensor
    latents: torch.Tensor
    labels: torch.Tensor
    permutation: torch.Tensor
    draws: int = 4
    seed: int = 0


def _derangement(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation that sends each image to one of another emotion where it can (else to another image)."""
    n = len(labels)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by emotion, shuffled within
    shift = int((labels == torch.mode(labels).values).sum()) if n > 1 else 0  # past the largest emotion group
    result = torch.empty_like(order)
    result[order] = order.roll(shift % max(n, 1))
    return result


@torch.no_grad()
def make_probe(
    samples: list[Sample],
    image_size: int,
    resolution: int,
    vae: Any,
    num_images: int = 64,
    draws: int = 4,
    seed: int = 0,
) -> ConditioningProbe | None:
    """The probe from the first ``num_images`` readable ``samples`` taken evenly across emotions (None when
    fewer than two are readable)."""
    per_class: dict[int, list[Sample]] = {}
    for sample in samples:
        per_class.setdefault(sample.label, []).append(sample)
    chosen: list[Sample] = []
    while len(chosen) < num_images and any(per_class.values()):
        for label in sorted(per_class):
            if per_class[label] and len(chosen) < num_images:
                chosen.append(per_class[label].pop(0))
    dataset = EmotionImageDataset(chosen, ClipTransform(image_size), on_bad_image="skip", diffusion_size=resolution)
    batch = collate([dataset[i] for i in range(len(dataset))])
    if "pixel_values" not in batch or len(batch["label"]) < 2:
        return None
    device, dtype = vae.device, vae.dtype
    latents = []
    for chunk in batch["diffusion_pixels"].split(32):
        dist = vae.encode(chunk.to(device, dtype)).latent_dist
        latents.append(dist.mean * float(vae.config.scaling_factor))
    labels = batch["label"]
    return ConditioningProbe(
        batch["pixel_values"], torch.cat(latents), labels, _derangement(labels, seed), draws, seed
    )


def token_norms(injector: Any) -> torch.Tensor:
    """The norms of a text encoder's token embeddings (V,), the placeholder's own (unused) row left out."""
    weight = injector.text_encoder.get_input_embeddings().weight.detach().float()
    keep = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    keep[injector.token_id] = False
    return weight[keep].norm(dim=-1)


def _loss(objective: Any, latents: torch.Tensor, context: dict[str, torch.Tensor], probe: ConditioningProbe) -> float:
    """Mean L(θ) over the probe's draws (the same noise and timesteps for every variant)."""
    total = 0.0
    for d in range(probe.draws):
        gen = torch.Generator().manual_seed(probe.seed * 7919 + d)
        total += float(objective.diffusion_term(latents, context, gen))
    return total / probe.draws


def conditioning_report(model: Any, objective: Any, probe: ConditioningProbe, chunk: int = 32) -> dict[str, float]:
    """The diagnostic on ``probe`` for a :class:`~uniemo.models.uniemo.UniEmoModel` and the run's
    :class:`~uniemo.train.objective.JointObjective`.

    Returns ``diag/loss_{own,shuffled,mean,empty}`` (L(θ) per variant), ``diag/gap_shuffled`` and
    ``diag/gap_empty`` (the variant's loss minus the own c's: > 0 when c helps), ``diag/c_norm`` (mean ‖c‖),
    ``diag/token_norm_mean`` / ``diag/token_norm_max`` (the text encoder's token embeddings),
    ``diag/c_class_cosine`` (mean pairwise cosine of the emotions' mean c) and ``grad/c_{cond,diffusion}`` (the
    gradient norm at c of each weighted term, on the probe's first ``chunk`` images).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pixels, labels = probe.pixel_values.to(device), probe.labels.to(device)
    with torch.no_grad():
        conditions = torch.cat([model(p, y).condition for p, y in zip(pixels.split(chunk), labels.split(chunk))])
    mean = conditions.mean(0, keepdim=True).expand_as(conditions)
    variants = {"own": conditions, "shuffled": conditions[probe.permutation.to(device)], "mean": mean, "empty": None}
    report: dict[str, float] = {}
    with torch.no_grad():
        for name, cond in variants.items():
            total = 0.0
            for start in range(0, len(labels), chunk):
                latents = probe.latents[start : start + chunk]
                part = None if cond is None else cond[start : start + chunk]
                total += _loss(objective, latents, objective.context(part, len(latents)), probe) * len(latents)
            report[f"diag/loss_{name}"] = total / len(labels)
    report["diag/gap_shuffled"] = report["diag/loss_shuffled"] - report["diag/loss_own"]
    report["diag/gap_empty"] = report["diag/loss_empty"] - report["diag/loss_own"]
    report["diag/c_norm"] = float(conditions.norm(dim=-1).mean())
    norms = token_norms(objective.encoder.injectors[0])
    report["diag/token_norm_mean"], report["diag/token_norm_max"] = float(norms.mean()), float(norms.max())
    present = [int(k) for k in labels.unique()]
    if len(present) > 1:
        means = torch.stack([conditions[labels == k].mean(0) for k in present])
        cos = (
            torch.nn.functional.normalize(means.float(), dim=-1)
            @ torch.nn.functional.normalize(means.float(), dim=-1).T
        )
        off = ~torch.eye(len(present), dtype=torch.bool, device=cos.device)
        report["diag/c_class_cosine"] = float(cos[off].mean())
    report.update(_gradient_norms(model, objective, pixels[:chunk], labels[:chunk], probe))
    model.train(was_training)
    return report


def _gradient_norms(
    model: Any, objective: Any, pixels: torch.Tensor, labels: torch.Tensor, probe: ConditioningProbe
) -> dict[str, float]:
    """‖∂(w·term)/∂c‖ for L_cond and L(θ): which term steers the mappers."""
    with torch.enable_grad():
        condition = model(pixels, labels).condition
        condition = condition.detach().requires_grad_(True)
        j = objective.joint
        out = {}
        cond_loss = objective.condition_term(model, condition, labels)
        if cond_loss is not None:
            (grad,) = torch.autograd.grad(j.condition_weight * cond_loss, condition, allow_unused=True)
            out["grad/c_cond"] = 0.0 if grad is None else float(grad.norm())
        latents = probe.latents[: len(labels)]
        gen = torch.Generator().manual_seed(probe.seed * 7919)
        theta = objective.diffusion_term(latents, objective.context(condition, len(labels)), gen)
        # a UNet that ignores its context leaves c out of the graph: its gradient is zero, not an error
        grad = None
        if theta.requires_grad:
            (grad,) = torch.autograd.grad(j.diffusion_weight * theta, condition, allow_unused=True)
        out["grad/c_diffusion"] = 0.0 if grad is None else float(grad.norm())
    return out


_PROBE = ConditioningProbeConfig()


def diagnose_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = _PROBE.split,
    num_images: int = _PROBE.num_images,
    draws: int = _PROBE.draws,
    seed: int = _PROBE.seed,
    device: str = _PROBE.device,
) -> dict[str, float]:
    """:func:`conditioning_report` for a finished joint checkpoint on ``num_images`` images of a dataset split,
    with the checkpoint's own training prompt and loss weights (its saved ``config.yaml``).

    Raises:
        CheckpointError: not a joint checkpoint. DataError: fewer than two readable images in ``split``.
    """
    from diffusers import DDPMScheduler

    pipe = UniEmoPipeline.from_pretrained(checkpoint, device=device)
    cfg = load_config(resolve_checkpoint(checkpoint) / CONFIG_FILE, [], JointRunConfig)
    diffusion = pipe.diffusion
    noise = DDPMScheduler.from_config(diffusion.scheduler.config)
    objective = JointObjective(pipe.encoder, diffusion.vae, diffusion.unet, noise, cfg.joint, cfg.loss)
    samples = open_dataset(data).split(split)
    probe = make_probe(
        samples, pipe.model.understanding.image_size, pipe.resolution, diffusion.vae, num_images, draws, seed
    )
    if probe is None:
        raise DataError(f"fewer than two readable images in the '{split}' split of {data}")
    return {"num_images": len(probe.labels), "draws": draws, **conditioning_report(pipe.model, objective, probe)}


def format_conditioning(report: dict[str, float]) -> str:
    """The diagnostic as a few lines a person reads: the four losses, the gaps, the norms, the gradients."""
    loss = {name: report[f"diag/loss_{name}"] for name in VARIANTS}
    lines = [
        f"L(θ) on {report.get('num_images', '?')} held-out images × {report.get('draws', '?')} fixed draws:",
        *(
            f"  {name:<9} c  {value:.5f}" if name != "empty" else f"  empty prompt {value:.5f}"
            for name, value in loss.items()
        ),
        f"shuffled − own {report['diag/gap_shuffled']:+.5f}, empty − own {report['diag/gap_empty']:+.5f} "
        + ("(the UNet uses c)" if report["diag/gap_shuffled"] > 0 else "(the UNet does not use c)"),
        f"‖c‖ {report['diag/c_norm']:.3f}; token embeddings ‖e‖ mean {report['diag/token_norm_mean']:.3f}, "
        f"max {report['diag/token_norm_max']:.3f}",
    ]
    grads = [f"{k.split('_', 1)[1]} {v:.3g}" for k, v in report.items() if k.startswith("grad/c_")]
    if grads:
        lines.append("gradient norm at c of each weighted term: " + ", ".join(grads))
    return "\n".join(lines)
