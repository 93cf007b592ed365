"""The placeholder token (models/placeholder.py): c enters the text encoder where the placeholder stands."""

import pytest
import torch

from uniemo.models.placeholder import PlaceholderInjector


@pytest.fixture
def text_encoder():
    from transformers import CLIPTextModel

    from uniemo.models.factory import architecture_config, clip_tokenizer

    torch.manual_seed(0)
    model = CLIPTextModel(architecture_config("micro-clip").text_config).eval().requires_grad_(False)
    return model, clip_tokenizer()


def test_injection_equals_the_plain_encoder_except_where_c_enters(text_encoder):
    model, tokenizer = text_encoder
    injector = PlaceholderInjector(model, tokenizer)
    assert injector.token_id == 49408 and model.get_input_embeddings().num_embeddings == 49409
    prompts = ["a photo of a bench, <emotion>", "<emotion>", "a cup <emotion> on a table"]
    ids = injector.tokenize(prompts)
    plain = model(input_ids=ids).last_hidden_state
    own_row = model.get_input_embeddings().weight[injector.token_id].expand(3, -1)
    with torch.no_grad():
        same = injector.encode(prompts, own_row.clone()).last_hidden_state
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # the token's own embedding: the plain encoder

    condition = torch.randn(3, own_row.shape[-1], requires_grad=True)
    out = injector.encode(prompts, condition).last_hidden_state  # (B, L, d_c)
    position = (ids == injector.token_id).int().argmax(dim=1)
    for b in range(3):
        p = int(position[b])
        torch.testing.assert_close(out[b, :p], plain[b, :p], rtol=0, atol=0)  # causal: before c, unchanged
        assert not torch.allclose(out[b, p], plain[b, p])
    out.sum().backward()
    assert condition.grad is not None and bool((condition.grad.abs().sum(-1) > 0).all())
    assert all(p.grad is None for p in model.parameters())  # the frozen encoder gets nothing
    # the hook is gone after the block
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, plain)


def test_injection_refuses_prompts_without_exactly_one_placeholder(text_encoder):
    injector = PlaceholderInjector(*text_encoder)
    with pytest.raises(ValueError, match="exactly once"):
        injector.tokenize(["a photo of a bench"])
    with pytest.raises(ValueError, match="exactly once"):
        injector.tokenize(["<emotion> and <emotion>"])
