"""Each mechanism of METHOD §2–§5 against values computed here by hand, on micro models built in milliseconds.

These tests are what `make mutate` runs against the mechanism modules: each fails when its mechanism is broken
(a loss that gives no gradient, c cut off from L(θ), α_O read from the scene prior, …), not only when it crashes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

# The classes of the toy diffusion pipelines, imported when the tests are collected: `make mutate` forks one test run
# per mutant after collection and would otherwise import them (seconds) in every run.
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401

from uniemo.config import JointConfig, LossConfig
from uniemo.losses import attribute_infonce, diffusion_loss, understanding_loss
from uniemo.models.architecture import ExpertQueryConfig, UniEmoConfig
from uniemo.models.diffusion import tiny_stable_diffusion
from uniemo.models.factory import architecture_config
from uniemo.models.placeholder import PromptEncoder, sdxl_time_ids
from uniemo.models.understanding import ExpertQueryCLIP
from uniemo.models.uniemo import UniEmoModel
from uniemo.train.objective import JointObjective, content_words

V_S, V_O, K = 5, 4, 8


def micro_understanding(seed: int = 0, names: tuple[int, int] = (V_S, V_O), **kwargs) -> ExpertQueryCLIP:
    """A micro expert-query CLIP with ``names`` = (scene, object) names of random unit embeddings; ``kwargs`` go to
    :class:`ExpertQueryCLIP` (e.g. ``query_mode``)."""
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    sizes = {
        "num_scene_queries": 4,
        "num_object_queries": 3,
        "num_scene_names": names[0],
        "num_object_names": names[1],
    }
    arch = ExpertQueryConfig(K, 16, **sizes, **kwargs)
    model = ExpertQueryCLIP(CLIPVisionModel(architecture_config("micro-clip").vision_config), arch)
    model.scene_vocab_embeds.copy_(F.normalize(torch.randn(names[0], 16), dim=-1))
    model.object_vocab_embeds.copy_(F.normalize(torch.randn(names[1], 16), dim=-1))
    return model


def batch_of(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=g),
        "diffusion_pixels": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
        "label": torch.tensor([0, 1, 5, 0, 6, 3][:n]),
        "scene_id": torch.tensor([0, 2, 2, -1, 4, 1][:n]),
        "object_id": torch.tensor([3, -1, 0, 1, 1, 2][:n]),
    }


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]


# ---- L_U = ce·L_CE + scene·L_S + object·L_O (METHOD §2) --------------------------------------------------------


@pytest.mark.parametrize("which", ["scene", "object", "ce"])
def test_each_understanding_term_enters_the_loss_with_its_weight_and_trains_its_part(which):
    model = micro_understanding()
    batch = batch_of()
    out = model(batch["pixel_values"])
    vocab = {"scene": model.scene_vocab_embeds, "object": model.object_vocab_embeds}
    weights = LossConfig(scene_weight=0.0, object_weight=0.0, ce_weight=0.0)
    setattr(weights, f"{which}_weight", 0.7)
    loss, parts = understanding_loss(out, batch, vocab, weights, 0.07)
    # the term by hand: cross-entropy of the logits, or InfoNCE of the query embeddings against the names
    if which == "ce":
        term = F.cross_entropy(out.logits, batch["label"])
    else:
        term = attribute_infonce(getattr(out, f"{which}_embeds"), batch[f"{which}_id"], vocab[which], 0.07)
    torch.testing.assert_close(loss, 0.7 * term)
    torch.testing.assert_close(parts[f"loss/{which}"], term.detach())
    # its gradient reaches the parameters it is meant to train: the scene queries for L_S, the object queries for L_O
    params = [model.scene_queries, model.object_queries, model.head.weight]
    expected = grads(0.7 * term, params)
    got = grads(loss, params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    index = {"scene": 0, "object": 1, "ce": 2}[which]
    assert got[index].abs().sum() > 0


def test_all_three_understanding_terms_add_up():
    model = micro_understanding()
    batch = batch_of()
    out = model(batch["pixel_values"])
    vocab = {"scene": model.scene_vocab_embeds, "object": model.object_vocab_embeds}
    loss, _ = understanding_loss(out, batch, vocab, LossConfig(0.25, 0.35, 0.5), 0.07)
    by_hand = (
        0.5 * F.cross_entropy(out.logits, batch["label"])
        + 0.25 * attribute_infonce(out.scene_embeds, batch["scene_id"], vocab["scene"], 0.07)
        + 0.35 * attribute_infonce(out.object_embeds, batch["object_id"], vocab["object"], 0.07)
    )
    torch.testing.assert_close(loss, by_hand)


# ---- α and c (METHOD §3–§4) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator_parts():
    pipe = tiny_stable_diffusion(seed=0)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    encoder = PromptEncoder(pipe)
    model = UniEmoModel(micro_understanding(), UniEmoConfig(encoder.condition_dims, mapper_hidden=16))
    g = torch.Generator().manual_seed(3)
    model.prior_scene.copy_(torch.rand(V_S, K, generator=g).softmax(1))
    model.prior_object.copy_((4 * torch.rand(V_O, K, generator=g)).softmax(1))  # unlike the scene prior
    return pipe, encoder, model


def test_alphas_read_each_attributes_own_prior_by_hand(generator_parts):
    _, _, model = generator_parts
    u = model.understanding
    g = torch.Generator().manual_seed(0)
    scene = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    obj = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    emotions = torch.tensor([0, 4, 7])
    a_s, a_o = model.alphas(scene, obj, emotions)
    for b in range(3):
        e = int(emotions[b])
        pi_s = (scene[b] @ u.scene_vocab_embeds.T / 0.07).softmax(-1)
        pi_o = (obj[b] @ u.object_vocab_embeds.T / 0.07).softmax(-1)
        assert float(a_s[b]) == pytest.approx(sum(float(pi_s[a] * model.prior_scene[a, e]) for a in range(V_S)))
        assert float(a_o[b]) == pytest.approx(sum(float(pi_o[a] * model.prior_object[a, e]) for a in range(V_O)))
    model.alpha_mode = "hard"
    try:
        h_s, h_o = model.alphas(scene, obj, emotions)
    finally:
        model.alpha_mode = "soft"
    for b in range(3):
        e = int(emotions[b])
        best_s = int((scene[b] @ u.scene_vocab_embeds.T).argmax())
        best_o = int((obj[b] @ u.object_vocab_embeds.T).argmax())
        assert float(h_s[b]) == pytest.approx(float(model.prior_scene[best_s, e]))
        assert float(h_o[b]) == pytest.approx(float(model.prior_object[best_o, e]))


def test_condition_is_the_alpha_weighted_sum_of_the_three_mappers(generator_parts):
    _, _, model = generator_parts
    batch = batch_of()
    with torch.no_grad():
        forward = model(batch["pixel_values"], batch["label"])
        out, c = forward.understanding, forward.condition
        a_s, a_o = model.alphas(out.scene_embeds, out.object_embeds, batch["label"])
        assert torch.equal(forward.alpha_scene, a_s) and torch.equal(forward.alpha_object, a_o)
        f = model.mappers
        by_hand = f.map_cls(out.cls) + a_s[:, None] * f.map_scene(out.scene) + a_o[:, None] * f.map_object(out.object)
        # the condition() path from features alone (generation's) projects the queries itself: the same c
        again = model.condition({"cls": out.cls, "scene": out.scene, "object": out.object}, batch["label"])
    torch.testing.assert_close(c, by_hand)
    torch.testing.assert_close(again, c)
    assert not torch.allclose(a_s, a_o)  # the two priors differ, so must the two α


def test_condition_norm_rescales_each_encoders_part(generator_parts):
    _, encoder, model = generator_parts
    normed = UniEmoModel(model.understanding, UniEmoConfig([20, 12], mapper_hidden=16, condition_norms=[0.5, 2.0]))
    c = torch.randn(3, 32)
    out = normed.normalize_condition(c)
    torch.testing.assert_close(out[:, :20], F.normalize(c[:, :20], dim=-1) * 0.5)
    torch.testing.assert_close(out[:, 20:], F.normalize(c[:, 20:], dim=-1) * 2.0)
    assert torch.equal(model.normalize_condition(c), c)  # without norms: c as mapped


# ---- L_Joint and the gradient of L(θ) at c (METHOD §4) ------------------------------------------------------


def vae_latents(pipe, batch: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """The objective's first draw from ``gen``, by hand: a sample of the VAE's latent distribution, scaled."""
    with torch.no_grad():
        latents = pipe.vae.encode(batch["diffusion_pixels"]).latent_dist.sample(generator=gen)
    return latents * pipe.vae.config.scaling_factor


def objective_for(pipe, encoder, **joint) -> JointObjective:
    cfg = JointConfig(understanding="-", resolution=32, **{"content_prompt": 0.0, **joint})
    return JointObjective(encoder, pipe.vae, pipe.unet, pipe.scheduler, cfg, LossConfig(), torch.float32)


def test_the_joint_objective_is_its_weighted_terms_and_l_theta_reads_c(generator_parts):
    pipe, encoder, model = generator_parts
    batch = batch_of()
    objective = objective_for(
        pipe, encoder, condition_loss="supcon", understanding_weight=0.3, condition_weight=0.2, diffusion_weight=0.9
    )
    loss, parts = objective(model, model, batch, torch.Generator().manual_seed(5))
    # L(θ) by hand, with the same draws: the VAE sample first, then the noise and the timesteps
    gen = torch.Generator().manual_seed(5)
    forward = model(batch["pixel_values"], batch["label"])
    out, c = forward.understanding, forward.condition
    latents = vae_latents(pipe, batch, gen)
    context = encoder.encode(["<emotion>"] * 6, c)["prompt_embeds"]
    theta = diffusion_loss(pipe.unet, pipe.scheduler, latents, context, gen)
    torch.testing.assert_close(parts["loss/diffusion"], theta.detach())
    vocab = {"scene": model.understanding.scene_vocab_embeds, "object": model.understanding.object_vocab_embeds}
    loss_u, _ = understanding_loss(out, batch, vocab, LossConfig(), 0.07)
    from uniemo.losses import supervised_contrastive

    torch.testing.assert_close(loss, 0.3 * loss_u + 0.2 * supervised_contrastive(c, batch["label"]) + 0.9 * theta)


def test_l_theta_alone_trains_every_mapper_through_c(generator_parts):
    """With L_U and L_cond off, only L(θ) is left: its gradient must reach all three mappers through c, the text
    encoder and the UNet (a c detached before the text encoder leaves them without any)."""
    pipe, encoder, model = generator_parts
    objective = objective_for(pipe, encoder, condition_loss="none", understanding_weight=0.0)
    loss, _ = objective(model, model, batch_of(), torch.Generator().manual_seed(0))
    f = model.mappers
    mappers = [next(m.parameters()) for m in (f.map_cls, f.map_scene, f.map_object)]
    assert all(float(g.abs().sum()) > 0 for g in grads(loss, mappers))
    frozen = [next(pipe.unet.parameters()), next(pipe.text_encoder.parameters())]
    assert all(not p.requires_grad for p in frozen)


def test_content_prompts_name_the_annotated_scene_and_object(generator_parts):
    pipe, encoder, _ = generator_parts
    objective = objective_for(pipe, encoder, content_prompt=1.0)
    objective.scene_vocab, objective.object_vocab = ["beach", "forest", "mountain", "city", "desert"], [
        "balloon", "tent", "car", "house",
    ]  # fmt: skip
    words = objective.contents(batch_of(), torch.Generator().manual_seed(0))
    assert words == [
        "a beach with a house",
        "a mountain",
        "a mountain with a balloon",
        "a tent",
        "a desert with a tent",
        "a forest with a car",
    ]
    # with probability content_prompt: the draws of the same generator decide which images get their words
    half = objective_for(pipe, encoder, content_prompt=0.5)
    half.scene_vocab, half.object_vocab = objective.scene_vocab, objective.object_vocab
    draws = torch.rand(6, generator=torch.Generator().manual_seed(1)).tolist()
    got = half.contents(batch_of(), torch.Generator().manual_seed(1))
    assert got == [w if d < 0.5 else None for w, d in zip(words, draws)] and 0 < got.count(None) < 6
    assert content_words("island", "owl") == "an island with an owl" and content_words(None, "umbrella") == (
        "an umbrella"
    )
    assert content_words(None, None) is None


# ---- L(θ) itself -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_noises_the_latents_as_ddpm_does(prediction_type):
    """A UNet that knows the clean latents x₀ and recovers ε from its noisy input x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
    (by hand, from the scheduler's ᾱ) predicts the target exactly — only if x_t really is that noised mix."""

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type)
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    bar = scheduler.alphas_cumprod

    def unet(noisy, t, encoder_hidden_states):
        a = bar[t].sqrt()[:, None, None, None]
        s = (1 - bar[t]).sqrt()[:, None, None, None]
        eps = (noisy - a * x0) / s
        return SimpleNamespace(sample=eps if prediction_type == "epsilon" else a * eps - s * x0)

    loss = diffusion_loss(unet, scheduler, x0, torch.zeros(3, 2, 4), torch.Generator().manual_seed(2))
    assert float(loss) < 1e-8
    # and the timesteps are drawn over the whole schedule: a UNet that ignores t cannot match the target
    loss = diffusion_loss(
        lambda noisy, t, encoder_hidden_states: unet(noisy, t.flip(0), encoder_hidden_states),
        scheduler, x0, torch.zeros(3, 2, 4), torch.Generator().manual_seed(2),
    )  # fmt: skip
    assert float(loss) > 1e-3


# ---- the model's other paths: α off, no queries, one or no names, the ce condition loss, the bank -------------


def micro_model(names: tuple[int, int] = (V_S, V_O), query_mode: str = "multi_stage", **kwargs) -> UniEmoModel:
    """A UniEmo model on :func:`micro_understanding` with random priors; ``kwargs`` go to :class:`UniEmoModel`."""
    model = UniEmoModel(
        micro_understanding(0, names, query_mode=query_mode), UniEmoConfig([32], mapper_hidden=16, **kwargs)
    )
    model.prior_scene.copy_(torch.rand(names[0], K).softmax(1))
    model.prior_object.copy_(torch.rand(names[1], K).softmax(1))
    return model


def test_alpha_none_gives_ones_and_a_single_name_gives_its_prior_and_no_names_one():
    emotions = torch.tensor([0, 3, 7])
    s, o = F.normalize(torch.randn(3, 16), dim=-1), F.normalize(torch.randn(3, 16), dim=-1)
    off = micro_model(alpha="none")
    assert all(torch.equal(a, torch.ones(3)) for a in off.alphas(s, o, emotions))
    one = micro_model(names=(1, V_O))  # one scene name: π = 1 on it, α_S = P(e | that name)
    torch.testing.assert_close(one.alphas(s, o, emotions)[0], one.prior_scene[0, emotions])
    none = micro_model(names=(V_S, 0))  # no object names in the data: α_O = 1, α_S still read
    a_s, a_o = none.alphas(s, o, emotions)
    assert torch.equal(a_o, torch.ones(3)) and not torch.allclose(a_s, torch.ones(3))


def test_without_queries_c_is_the_mapped_class_token_alone():
    model = micro_model(query_mode="none")
    cls = torch.randn(2, model.understanding.vision.config.hidden_size)
    a_s, a_o = model.alphas(None, None, torch.tensor([1, 2]))
    assert torch.equal(a_s, torch.ones(2)) and torch.equal(a_o, torch.ones(2))
    c = model.condition({"cls": cls, "scene": None, "object": None}, torch.tensor([1, 2]))
    torch.testing.assert_close(c, model.mappers.map_cls(cls))


def test_the_ce_condition_loss_reads_c_with_the_frozen_stage1_head_or_its_own(generator_parts):
    pipe, encoder, model = generator_parts
    c = torch.randn(4, 32)
    u = model.understanding
    torch.testing.assert_close(model.condition_logits(c), c @ u.head.weight.T + u.head.bias)
    headed = UniEmoModel(u, UniEmoConfig(encoder.condition_dims, mapper_hidden=16, condition_head=True))
    torch.testing.assert_close(headed.condition_logits(c), headed.condition_head(c))
    # the parameters joint training creates: the mappers, and the condition head when there is one
    assert {id(p) for p in headed.generation_parameters()} == {
        id(p) for p in [*headed.mappers.parameters(), *headed.condition_head.parameters()]
    }
    assert {id(p) for p in model.generation_parameters()} == {id(p) for p in model.mappers.parameters()}
    objective = objective_for(
        pipe, encoder, condition_loss="ce", understanding_weight=0.0, condition_weight=0.3, diffusion_weight=0.0
    )
    batch = batch_of()
    loss, _ = objective(model, model, batch, torch.Generator().manual_seed(0))
    cond = model(batch["pixel_values"], batch["label"]).condition
    torch.testing.assert_close(loss, 0.3 * F.cross_entropy(model.condition_logits(cond), batch["label"]))


def test_the_models_bank_gives_real_triples_and_diversity_moves_them_to_the_mean():
    from uniemo.models.emotion_space import emotion_space

    model = micro_model(space_bank=3)
    dim = model.understanding.vision.config.hidden_size
    labels = torch.arange(16) % K
    feats = {n: torch.randn(16, dim) + 10 * i for i, n in enumerate(("cls", "scene", "object"))}
    model.set_emotion_space(emotion_space(feats, labels, K, bank=3))
    drawn = model.sample_features(torch.tensor([2, 5]), torch.Generator().manual_seed(0))
    for j, k in enumerate((2, 5)):  # each draw is one real image of that emotion: its cls, scene and object
        index = next(i for i in range(16) if torch.equal(drawn["cls"][j], feats["cls"][i]))
        assert labels[index] == k and torch.equal(drawn["scene"][j], feats["scene"][index])
        assert torch.equal(drawn["object"][j], feats["object"][index])
    mean = model.sample_features(torch.tensor([2]), torch.Generator().manual_seed(0), diversity=0.0)
    torch.testing.assert_close(mean["cls"][0], feats["cls"][labels == 2].mean(0))
    # diversity moves the real triple towards the mean: halfway at 0.5, the same image as at 1
    half = model.sample_features(torch.tensor([2, 5]), torch.Generator().manual_seed(0), diversity=0.5)
    for name in ("cls", "scene", "object"):
        means = torch.stack([feats[name][labels == k].mean(0) for k in (2, 5)])
        torch.testing.assert_close(half[name], (means + drawn[name]) / 2)


def test_label_smoothing_enters_the_cross_entropy():
    model = micro_understanding()
    batch = batch_of()
    out = model(batch["pixel_values"])
    vocab = {"scene": model.scene_vocab_embeds, "object": model.object_vocab_embeds}
    loss, _ = understanding_loss(out, batch, vocab, LossConfig(0.0, 0.0, 1.0, label_smoothing=0.2), 0.07)
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, batch["label"], label_smoothing=0.2))


def test_content_prompts_reach_l_theta_and_the_control_is_the_empty_prompt(generator_parts):
    pipe, encoder, model = generator_parts
    objective = objective_for(pipe, encoder, content_prompt=1.0, condition_loss="none", understanding_weight=0.0)
    objective.scene_vocab, objective.object_vocab = ["beach", "forest", "mountain", "city", "desert"], [
        "balloon", "tent", "car", "house",
    ]  # fmt: skip
    batch = batch_of()
    _, parts = objective(model, model, batch, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    c = model(batch["pixel_values"], batch["label"]).condition
    latents = vae_latents(pipe, batch, gen)
    words = objective.contents(batch, gen)  # drawn after the VAE sample, before the noise
    prompts = [f"<emotion>, {w}" if w else "<emotion>" for w in words]  # joined by the default transfer_template
    theta = diffusion_loss(pipe.unet, pipe.scheduler, latents, encoder.encode(prompts, c)["prompt_embeds"], gen)
    torch.testing.assert_close(parts["loss/diffusion"], theta.detach())
    control = objective.context(None, 3)["prompt_embeds"]
    torch.testing.assert_close(control, encoder.encode([""] * 3)["prompt_embeds"])


def test_sdxl_prompts_are_both_encoders_penultimate_layers_and_l_theta_gets_the_added_conditions():
    """SDXL: prompt embeddings = the penultimate hidden states of both text encoders side by side, the pooled
    embedding = the second encoder's projection, and L(θ) gives the UNet those and the size micro-conditioning."""
    from diffusers import DDPMScheduler

    from uniemo.models.diffusion import tiny_stable_diffusion_xl

    pipe = tiny_stable_diffusion_xl(seed=0)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False)
    encoder = PromptEncoder(pipe)
    prompts = ["a house", "a boat"]
    got = encoder.encode(prompts)
    hidden = []
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        out = text_encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    torch.testing.assert_close(got["prompt_embeds"], torch.cat(hidden, dim=-1))
    torch.testing.assert_close(got["pooled_prompt_embeds"], out.text_embeds)

    model = UniEmoModel(micro_understanding(), UniEmoConfig(encoder.condition_dims, mapper_hidden=16))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    cfg = JointConfig(
        understanding="-", resolution=32, content_prompt=0.0, condition_loss="none", understanding_weight=0.0
    )
    objective = JointObjective(encoder, pipe.vae, pipe.unet, scheduler, cfg, LossConfig(), torch.float32)
    batch = batch_of()
    _, parts = objective(model, model, batch, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    c = model(batch["pixel_values"], batch["label"]).condition
    latents = vae_latents(pipe, batch, gen)
    text = encoder.encode(["<emotion>"] * 6, c)
    added = {"text_embeds": text["pooled_prompt_embeds"], "time_ids": sdxl_time_ids(6, 32, "cpu", torch.float32)}
    theta = diffusion_loss(pipe.unet, scheduler, latents, text["prompt_embeds"], gen, added)
    torch.testing.assert_close(parts["loss/diffusion"], theta.detach())
    control = objective.context(None, 2)
    torch.testing.assert_close(control["added"]["text_embeds"], encoder.encode(["", ""])["pooled_prompt_embeds"])


def test_a_dataset_without_scene_names_still_trains_the_object_queries():
    model = micro_understanding(names=(0, V_O))
    batch = batch_of()
    out = model(batch["pixel_values"])
    vocab = {"scene": model.scene_vocab_embeds, "object": model.object_vocab_embeds}
    loss, parts = understanding_loss(out, batch, vocab, LossConfig(0.5, 0.5, 0.0), 0.07)
    torch.testing.assert_close(
        loss, 0.5 * attribute_infonce(out.object_embeds, batch["object_id"], vocab["object"], 0.07)
    )
    assert "loss/scene" not in parts
