"""Placeholder injection (METHOD §4): c becomes the input embedding of a placeholder token (``<emotion>``) in the
frozen text encoder(s) of Stable Diffusion; :class:`PromptEncoder` gives the UNet its text conditioning with c in
the placeholder's place, for SD 1.x/2.x (one text encoder) and SDXL (two).

Shape legend:
    B    batch size
    d_c  token-embedding width of a text encoder (c has Σ d_c entries, one part per encoder)
    L    prompt length in tokens (77)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


class PlaceholderInjector:
    """Replaces a placeholder token's input embedding by a condition vector, in any CLIP text encoder.

    A placeholder token (e.g. ``<emotion>``) is added to the tokenizer; inside :meth:`inject`, a forward hook on
    the encoder's token-embedding module puts each prompt's condition in the placeholder's row. Everything
    after the embedding (positions, causal attention, final norm, pooling) is the encoder's own, and gradients
    reach the condition by ordinary autograd, whatever the batch size.

    Args:
        text_encoder: a ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (kept frozen by the caller).
        tokenizer: its tokenizer.
        placeholder: the placeholder's text.
    """

    def __init__(self, text_encoder: Any, tokenizer: Any, placeholder: str = "<emotion>") -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.placeholder = placeholder
        if placeholder not in tokenizer.get_vocab():
            tokenizer.add_tokens([placeholder])
        self.token_id = tokenizer.convert_tokens_to_ids(placeholder)
        embeddings = text_encoder.get_input_embeddings()
        if embeddings.num_embeddings <= self.token_id:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # Checkpoints with the legacy eos_token_id 2 (SDXL's second encoder, older CLIP configs) pool at the
        # highest token id, which is now the placeholder: pool at the real end-of-text token instead.
        for module in text_encoder.modules():
            if getattr(module, "eos_token_id", None) == 2:
                module.eos_token_id = tokenizer.eos_token_id

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L) token ids, padded to the tokenizer's maximum length; each prompt holds the placeholder once.

        Raises:
            ValueError: a prompt without the placeholder, or with it more than once.
        """
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt").input_ids
        counts = (ids == self.token_id).sum(dim=1)
        if bool((counts != 1).any()):
            bad = prompts[int((counts != 1).nonzero()[0])]
            raise ValueError(f"each prompt must hold '{self.placeholder}' exactly once: {bad!r}")
        return ids

    @contextlib.contextmanager
    def inject(self, input_ids: torch.Tensor, condition: torch.Tensor) -> Iterator[None]:
        """Within the block, the text encoder sees ``condition`` (B, d_c) in the placeholder rows of ``input_ids``."""
        mask = (input_ids == self.token_id).unsqueeze(-1)  # (B, L, 1)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            cond = condition[:, None, :].to(device=output.device, dtype=output.dtype)  # (B, 1, d_c)
            return torch.where(mask.to(output.device), cond, output)  # (B, L, d_c)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, prompts: Sequence[str], condition: torch.Tensor) -> Any:
        """The text encoder's output for ``prompts`` with ``condition`` (B, d_c) as the placeholder's embedding."""
        ids = self.tokenize(prompts).to(condition.device)
        with self.inject(ids, condition):
            return self.text_encoder(input_ids=ids)


class PromptEncoder:
    """A Stable Diffusion pipeline's text side with the placeholder: SD 1.x/2.x (one text encoder, the last
    hidden state) or SDXL (two encoders, their penultimate hidden states concatenated, and the second's pooled
    projection). c is split per encoder, each part replaces the placeholder's
    input embedding in its encoder.

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (its text encoders stay frozen).
        placeholder: the placeholder's text, added to each tokenizer.
    """

    def __init__(self, pipe: Any, placeholder: str = "<emotion>") -> None:
        self.is_xl = getattr(pipe, "text_encoder_2", None) is not None
        pairs = [(pipe.text_encoder, pipe.tokenizer)]
        if self.is_xl:
            pairs.append((pipe.text_encoder_2, pipe.tokenizer_2))
        self.injectors = [PlaceholderInjector(enc, tok, placeholder) for enc, tok in pairs]
        self.condition_dims = [enc.get_input_embeddings().embedding_dim for enc, _ in pairs]
        self.placeholder = placeholder

    def _ids(self, injector: PlaceholderInjector, prompts: Sequence[str], with_placeholder: bool) -> torch.Tensor:
        if with_placeholder:
            return injector.tokenize(prompts)
        tok = injector.tokenizer
        return tok(list(prompts), padding="max_length", truncation=True, return_tensors="pt").input_ids

    def encode(self, prompts: Sequence[str], condition: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning for ``prompts``; with ``condition`` (B, Σ d_c) every prompt must hold the
        placeholder once and c takes its place.

        Returns:
            ``prompt_embeds`` (B, L, d_ctx) and, for SDXL, ``pooled_prompt_embeds`` (B, d_pool).
        """
        parts = (
            list(condition.split(self.condition_dims, dim=-1))
            if condition is not None
            else [None] * len(self.injectors)
        )
        hidden, pooled = [], None
        for injector, part in zip(self.injectors, parts):
            encoder = injector.text_encoder
            device = encoder.device
            ids = self._ids(injector, prompts, part is not None).to(device)
            if part is None:
                out = encoder(input_ids=ids, output_hidden_states=self.is_xl)
            else:
                with injector.inject(ids, part):
                    out = encoder(input_ids=ids, output_hidden_states=self.is_xl)
            hidden.append(out.hidden_states[-2] if self.is_xl else out[0])
            if self.is_xl:
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        result = {"prompt_embeds": torch.cat(hidden, dim=-1)}
        if self.is_xl:
            result["pooled_prompt_embeds"] = pooled
        return result


def sdxl_time_ids(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning (original size, crop top-left, target size) for square ``size`` images (B, 6)."""
    ids = torch.tensor([size, size, 0, 0, size, size], dtype=dtype, device=device)
    return ids.expand(batch, 6)
