import pytest
import torch

from uniemo.errors import CheckpointError
from uniemo.losses import diffusion_loss
from uniemo.models.diffusion import load_stable_diffusion, tiny_stable_diffusion


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_diffusion(seed=0)


def test_tiny_sd_round_trips_through_a_diffusers_directory(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "sd")
    again = load_stable_diffusion(str(tmp_path / "sd"))
    assert len(again.tokenizer) == 49408
    ids = again.tokenizer(["a bench"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = again.text_encoder(ids)[0]
        torch.testing.assert_close(ctx, pipe.text_encoder(ids)[0], rtol=0, atol=0)
        latents = torch.randn(1, 4, 16, 16)
        t = torch.tensor([10])
        a = again.unet(latents, t, encoder_hidden_states=ctx).sample
        torch.testing.assert_close(a, pipe.unet(latents, t, encoder_hidden_states=ctx).sample, rtol=0, atol=0)
    image = again(
        prompt="a bench",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3)


def test_unknown_diffusion_model_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot load a Stable Diffusion pipeline from local directory"):
        load_stable_diffusion(str(tmp_path))
    with pytest.raises(CheckpointError, match="hub id"):
        load_stable_diffusion("nobody/no-such-model")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_targets_and_gradients(pipe, prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    latents = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 77, 32, requires_grad=True)
    unet = pipe.unet.requires_grad_(False)

    class Oracle(torch.nn.Module):  # predicts exactly the target: the loss must be 0
        config = unet.config

        def forward(self, noisy, t, encoder_hidden_states):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
            target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
            return type("Out", (), {"sample": target})()

    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731 - the same draws in both calls
    assert float(diffusion_loss(Oracle(), scheduler, latents, context, gen())) == pytest.approx(0.0, abs=1e-10)
    loss = diffusion_loss(unet, scheduler, latents, context, gen())
    assert torch.equal(loss, diffusion_loss(unet, scheduler, latents, context, gen()))  # seeded: reproducible
    loss.backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())
