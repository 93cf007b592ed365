"""The GPU check (run by ``benchmarks/gpu_check.sh``): stage-1 and joint training throughput, peak memory and
seconds per generated image at the real sizes, in bf16, with MFU estimates.

    python benchmarks/gpu_check.py [--tiny] [--stage1-batch 64] [--joint-batch 8] [--steps 25]

No network on a GPU machine, so the models are random weights of the real architectures: CLIP ViT-L/14 with the
paper's 32 + 32 expert queries and EmoSet's 254 scene / 409 object names, and Stable Diffusion 1.5 at 512 px.
Timings are the same code ``uniemo train`` and ``uniemo generate`` run (``JointObjective``, ``UniEmoPipeline``).
FLOPs are counted by ``torch.utils.flop_counter`` on one step; MFU = counted FLOP/s ÷ the chip's dense bf16 peak
(H100/H200 SXM: 989 TFLOP/s; ``--peak-tflops`` for others). ``--tiny`` runs the same path with toy models on a
CPU in seconds (the test suite does, so the script cannot rot between GPU sessions). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without installing

#: dense bf16 peak (TFLOP/s) by device-name fragment; Hopper SXM per NVIDIA's datasheets
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.2}
CLASSES = 8
SCENES, OBJECTS = 254, 409


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy models on any device (a smoke test of the script)")
    parser.add_argument("--stage1-batch", type=int, default=64)
    parser.add_argument("--joint-batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="images per generation call")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--iters", type=int, default=10, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from timing import setup

    env = setup()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    if args.tiny:
        clip, diffusion, resolution, queries, iters, steps = "tiny-clip", "tiny-sd", 32, 8, 2, 2
        args.stage1_batch, args.joint_batch, args.images = 4, 2, 2
    else:
        clip, diffusion, resolution, queries, iters, steps = (
            "clip-vit-large-patch14-arch",
            "sd15-arch",
            512,
            32,
            args.iters,
            args.steps,
        )
    print(f"device: {name}; torch {torch.__version__}; bf16; CLIP {clip}, diffusion {diffusion} at {resolution} px")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(step, n: int) -> float:
        for _ in range(3 if not args.tiny else 1):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - start) / n

    def counted(step) -> float:
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())

    def mfu(flops: float, seconds: float) -> float | None:
        return flops / seconds / (peak * 1e12) if peak else None

    from uniemo.models.diffusion import load_stable_diffusion
    from uniemo.models.placeholder import PromptEncoder

    report: dict = {"benchmark": "gpu_check", "device": name, "peak_tflops": peak, "tiny": args.tiny, **env}
    t0 = time.perf_counter()
    shapes = {"clip": clip, "queries": queries, "resolution": resolution, "device": device}
    tools = {"timed": timed, "counted": counted, "mfu": mfu}

    report["stage1"] = stage1_check(shapes, tools, args.stage1_batch, iters)
    r = report["stage1"]
    print(f"stage 1: {r['images_per_s']:.1f} images/s at batch {r['batch']} ({_pct(r['mfu'])} MFU)")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    pipe = load_stable_diffusion(diffusion)
    encoder = PromptEncoder(pipe)
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.requires_grad_(False).eval().to(device, dtype=torch.bfloat16)  # frozen parts in bf16, as in training
    report["joint"], joint_model = joint_check(shapes, tools, pipe, encoder, args.joint_batch, iters)
    r = report["joint"]
    memory = f", peak memory {r['peak_memory_gib']:.1f} GiB" if cuda else ""
    print(f"joint: {r['images_per_s']:.2f} images/s at batch {r['batch']}{memory} ({_pct(r['mfu'])} MFU)")
    if cuda:
        torch.cuda.empty_cache()

    report["generation"] = generation_check(shapes, tools, pipe, encoder, joint_model, args.images, steps)
    for r in report["generation"]["rows"]:
        print(
            f"generation: {r['seconds_per_image']:.3f} s per {resolution} px image at {steps} steps, "
            f"{r['images_per_call']} per call ({_pct(r['unet_mfu'])} MFU of the UNet calls)"
        )
    report["seconds"] = time.perf_counter() - t0
    print(json.dumps(report))
    return 0


def _understanding_model(shapes: dict):
    import torch

    from uniemo.models.architecture import ExpertQueryConfig
    from uniemo.models.factory import architecture_config, load_clip_vision
    from uniemo.models.understanding import ExpertQueryCLIP

    arch = ExpertQueryConfig(
        CLASSES,
        architecture_config(shapes["clip"]).projection_dim,
        num_scene_queries=shapes["queries"],
        num_object_queries=shapes["queries"],
        num_scene_names=SCENES,
        num_object_names=OBJECTS,
    )
    model = ExpertQueryCLIP(load_clip_vision(shapes["clip"]), arch)
    for buffer in (model.scene_vocab_embeds, model.object_vocab_embeds):
        buffer.copy_(torch.nn.functional.normalize(torch.randn_like(buffer), dim=-1))
    return model.to(shapes["device"])


def _batch(shapes: dict, n: int, side: int) -> dict:
    import torch

    device, resolution = shapes["device"], shapes["resolution"]
    return {
        "pixel_values": torch.randn(n, 3, side, side, device=device),
        "diffusion_pixels": torch.rand(n, 3, resolution, resolution, device=device) * 2 - 1,
        "label": (torch.arange(n, device=device) // 2) % CLASSES,  # pairs: L_cond has positives
        "scene_id": torch.arange(n, device=device) % SCENES,
        "object_id": torch.arange(n, device=device) % OBJECTS,
    }


def _training_row(step, batch: int, iters: int, tools: dict, device) -> dict:
    """Counted FLOPs, then ``iters`` timed steps: images/s, MFU and peak memory (CUDA) of one training step."""
    import torch

    flops = tools["counted"](step)
    seconds = tools["timed"](step, iters)
    return {
        "batch": batch,
        "images_per_s": batch / seconds,
        "seconds_per_step": seconds,
        "tflop_per_step": flops / 1e12,
        "mfu": tools["mfu"](flops, seconds),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def stage1_check(shapes: dict, tools: dict, batch: int, iters: int) -> dict:
    """Stage 1: the whole understanding model trains (the backbone too), bf16 autocast, L_U."""
    import torch

    from uniemo.config import LossConfig
    from uniemo.losses import understanding_loss

    model = _understanding_model(shapes).train()
    data = _batch(shapes, batch, model.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = {"scene": model.scene_vocab_embeds, "object": model.object_vocab_embeds}

    def step() -> None:
        with torch.autocast(shapes["device"].type, dtype=torch.bfloat16):
            loss, _ = understanding_loss(model(data["pixel_values"]), data, vocab, LossConfig(), 0.07)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _training_row(step, batch, iters, tools, shapes["device"])


def joint_check(shapes: dict, tools: dict, pipe, encoder, batch: int, iters: int):
    """Stage 2: ``JointObjective`` with the frozen SD in bf16 and the trainable parts in fp32 under autocast (as
    ``uniemo train joint`` with ``mixed_precision: bf16``); returns the row and the model (for generation)."""
    import torch
    from diffusers import DDPMScheduler

    from uniemo.config import JointConfig, LossConfig
    from uniemo.models.architecture import UniEmoConfig
    from uniemo.models.uniemo import UniEmoModel
    from uniemo.train.joint import JointObjective

    understanding = _understanding_model(shapes)
    understanding.vision.requires_grad_(False)  # stage 2's default (backbone_lr_scale 0)
    model = UniEmoModel(understanding, UniEmoConfig(encoder.condition_dims, mapper_hidden=1024))
    model = model.to(shapes["device"]).train()
    objective = JointObjective(
        encoder,
        pipe.vae,
        pipe.unet,
        DDPMScheduler.from_config(pipe.scheduler.config),
        JointConfig(resolution=shapes["resolution"]),
        LossConfig(),
        torch.bfloat16,
    )
    data = _batch(shapes, batch, understanding.image_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator()

    def step() -> None:
        with torch.autocast(shapes["device"].type, dtype=torch.bfloat16):
            loss, _ = objective(model, model, data, gen.manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _training_row(step, batch, iters, tools, shapes["device"]), model


def generation_check(shapes: dict, tools: dict, pipe, encoder, model, images: int, steps: int) -> dict:
    """``UniEmoPipeline`` with its default sampler (DPM-Solver++), classifier-free guidance, 1 and ``images``
    images per call."""
    import torch

    from uniemo.pipelines.generation import DEFAULT_SCHEDULER, UniEmoPipeline

    device, resolution = shapes["device"], shapes["resolution"]
    model.eval()
    d = model.understanding.vision.config.hidden_size
    space = {}
    for name in ("cls", "scene", "object"):
        space[f"{name}_mean"] = torch.randn(CLASSES, d, device=device)
        space[f"{name}_std"] = torch.ones(CLASSES, d, device=device)
    model.set_emotion_space(space)
    meta = {"classes": [f"e{i}" for i in range(CLASSES)], "placeholder": "<emotion>", "resolution": resolution}
    upipe = UniEmoPipeline(model, pipe, meta)
    side = resolution // pipe.vae_scale_factor
    rows = []
    for n in sorted({1, images}):
        latents = torch.randn(2 * n, 4, side, side, device=device, dtype=torch.bfloat16)  # the guided batch
        context = torch.randn(2 * n, 77, encoder.condition_dims[0], device=device, dtype=torch.bfloat16)
        t = torch.tensor(500, device=device)
        with torch.no_grad():
            unet_flops = tools["counted"](lambda latents=latents, context=context, t=t: pipe.unet(latents, t, context))
        seconds = tools["timed"](lambda n=n: upipe("e0", num_images=n, steps=steps, seed=0, batch_size=n), 2)
        rows.append(
            {
                "images_per_call": n,
                "seconds_per_image": seconds / n,
                "unet_mfu": tools["mfu"](unet_flops * steps, seconds),
            }
        )
    return {"scheduler": DEFAULT_SCHEDULER, "steps": steps, "rows": rows}


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "n/a"


if __name__ == "__main__":
    sys.exit(main())
