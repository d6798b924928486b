"""Prompt tuning (GLIPv2): adapt a frozen model to a task by learning only an additive offset on its fixed
prompt's token features, at the input of the deep-fusion tower (GLIPv2's P-ring: ``P + delta``).

A tuned prompt is a small file (the offset and the prompt it belongs to), kept apart from the model weights::

    det = openglip.load_model("runs/base/model.safetensors")
    det.add_tuned_prompt(openglip.load_tuned_prompt("novel.prompt.safetensors"))
    det.predict(image, ["red hexagon", "green star"])   # the tuned prompt's phrases -> offset applied
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import UsageError
from .files import atomic_write, read_safetensors
from .models.glip import TextFeatures
from .prompts import Prompt, build_prompt


@dataclass
class TunedPrompt:
    """A prompt and the learned offset of its token features.

    Attributes:
        prompt: the fixed prompt (caption and phrases) the offset was trained for.
        delta: (T, Dt) offset added to the text encoder's output for the prompt's T tokens.
        model: name of the preset the offset was trained on (a check, not a guarantee).
    """

    prompt: Prompt
    delta: torch.Tensor
    model: str = ""

    def save(self, path: str | os.PathLike) -> None:
        meta = {
            "format": "openglip-tuned-prompt",
            "caption": self.prompt.caption,
            "phrases": json.dumps(list(self.prompt.phrases)),
            "spans": json.dumps([[list(s) for s in spans] for spans in self.prompt.spans]),
            "model": self.model,
        }
        delta = self.delta.detach().cpu().contiguous()
        atomic_write(path, lambda tmp: save_file({"delta": delta}, tmp, metadata=meta))


def load_tuned_prompt(path: str | os.PathLike) -> TunedPrompt:
    """Read a tuned prompt written by :meth:`TunedPrompt.save` (``openglip tune --mode prompt``).

    Raises:
        UsageError: the file is missing, unreadable or not a tuned prompt.
    """
    if not os.path.isfile(path):
        raise UsageError(f"tuned prompt not found: {path}")
    try:
        meta, tensors = read_safetensors(path)
    except ValueError as err:
        raise UsageError(f"cannot read tuned prompt {path}: {err}") from None
    if meta.get("format") != "openglip-tuned-prompt" or "delta" not in tensors:
        raise UsageError(f"{path} is not an OpenGLIP tuned prompt (written by openglip tune --mode prompt)")
    spans = tuple(tuple(tuple(s) for s in sp) for sp in json.loads(meta["spans"]))
    prompt = Prompt(meta["caption"], tuple(json.loads(meta["phrases"])), spans)
    return TunedPrompt(prompt, tensors["delta"], meta.get("model", ""))


class PromptTunedGLIP(nn.Module):
    """A frozen GLIP plus a learnable offset on one fixed prompt's token features.

    ``forward`` has the signature of :class:`~openglip.models.glip.GLIP` for tokenized input, and every
    caption of the batch must be the tuned prompt (the offset is aligned to its tokens).
    """

    def __init__(self, glip: nn.Module, prompt: Prompt):
        super().__init__()
        self.glip = glip.requires_grad_(False)
        self.prompt = prompt
        ids, _ = glip.tokenize([prompt.caption])
        self.register_buffer("prompt_ids", ids[0], persistent=False)
        self.delta = nn.Parameter(torch.zeros(ids.shape[1], glip.text_encoder.hidden_size))

    def forward(self, pixel_values, image_sizes=None, *, input_ids, attention_mask):
        T = self.prompt_ids.shape[0]
        if input_ids.shape[1] != T or not bool((input_ids == self.prompt_ids.to(input_ids.device)).all()):
            raise UsageError("prompt tuning needs every caption of the batch to be the tuned prompt")
        with torch.no_grad():
            hidden = self.glip.text_encoder(input_ids, attention_mask)
        text = TextFeatures(input_ids, attention_mask, hidden + self.delta)
        return self.glip(pixel_values, image_sizes, text=text)

    def tuned_prompt(self) -> TunedPrompt:
        name = getattr(getattr(self.glip, "config", None), "name", "")
        return TunedPrompt(self.prompt, self.delta.detach().cpu().clone(), name)


def fixed_prompt(categories) -> Prompt:
    """The fixed prompt of a task: its category names in order (GLIP's downstream fine-tuning prompt)."""
    return build_prompt(list(categories))
