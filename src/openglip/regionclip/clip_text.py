"""The official RegionCLIP text path: concept embeddings for any vocabulary.

RegionCLIP's released detectors classify regions against a matrix of concept embeddings (``concept_emb/*.pth``),
made by the official ``tools/extract_concept_features.py`` with ``MODEL.CLIP.GET_CONCEPT_EMB True``: each concept
is put into the 81 prompt templates below, tokenised with CLIP's BPE, run through CLIP's text transformer (the
detector's ``lang_encoder``) and the 81 prompt embeddings are averaged, without normalising them first. This
module reproduces that path number for number (``shared/reference/regionclip_rn50``, stages ``text.*``) and
reads and writes the files.

:class:`CLIPLanguageEncoder` has the official parameter names (``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final.*``, ``text_projection``), so under the
prefix ``lang_encoder.`` its state dict is the official one, key for key. Its blocks and the BPE tokenizer are
open_clip's (the ``[clip]`` extra), which are the OpenAI CLIP modules and vocabulary file the official code copies.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError, UsageError
from ..files import atomic_write

CONTEXT_LENGTH = 77  # CLIP's text context (official ``context_length``)
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary incl. <|startoftext|> (49406) and <|endoftext|> (49407)


@dataclass(frozen=True)
class TextArch:
    """Size of a CLIP text transformer (official ``build_clip_language_encoder``; 12 layers for every ResNet)."""

    width: int
    heads: int
    layers: int
    embed_dim: int


# The official builder picks these by ResNet depth (50 -> RN50, its "200" flag -> RN50x4).
TEXT_ARCHS: dict[str, TextArch] = {
    "RN50": TextArch(width=512, heads=8, layers=12, embed_dim=1024),
    "RN50x4": TextArch(width=640, heads=10, layers=12, embed_dim=640),
}

# The 81 templates of the official ``clip_prompt_utils.get_prompt_templates()``, in its order (the order does not
# change the mean, but the reference's token tensor is laid out in it).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The official pattern treats "<|startoftext|>" / "<|endoftext|>" in a prompt as the special tokens, open_clip
# treats "<start_of_text>" / "<end_of_text>" so; a name holding any of them would tokenise differently, so it is
# refused (no real concept name does).
_SPECIAL_STRINGS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")


def _open_clip_transformer():
    """open_clip's ``transformer`` module (the ``[clip]`` extra), or a UsageError saying how to install it."""
    try:
        from open_clip import transformer
    except ImportError:
        raise UsageError(
            "the RegionCLIP text encoder needs open_clip: pip install 'openglip[clip]'"
        ) from None
    return transformer


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """open_clip's copy of OpenAI's ``SimpleTokenizer`` on the same ``bpe_simple_vocab_16e6.txt.gz`` the official
    code bundles: same merges, same ids, same cleaning (ftfy, double HTML unescape, whitespace collapse, lower)."""
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        raise UsageError("CLIP tokenisation needs open_clip: pip install 'openglip[clip]'") from None
    return SimpleTokenizer()


def fill_template(template: str, name: str) -> str:
    """A prompt as the official ``prompt_engineering`` builds it.

    Official quirk, kept: commas are deleted from the name and ``+`` becomes a space before it replaces ``{}``.
    """
    return template.replace("{}", name.replace(",", "").replace("+", " "))


def prompt_token_ids(text: str) -> list[int]:
    """``[SOT] + BPE(text) + [EOT]`` cut to 77 ids, unpadded, as the official ``convert_example_to_features_bpe``.

    Official quirk, kept: a prompt longer than 77 ids is cut *after* EOT was appended, so it loses its EOT and the
    encoder's ``argmax`` then reads the position of the largest BPE id instead (open_clip would instead overwrite
    the last id with EOT).

    Raises:
        UsageError: the prompt contains a CLIP special-token string (it would tokenise unlike the official code).
    """
    tok = _tokenizer()
    cleaned = tok.clean_fn(text)
    if any(s in cleaned for s in _SPECIAL_STRINGS):
        raise UsageError(
            f"prompt {text!r} contains a CLIP special-token string; remove it from the concept name"
        )
    ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
    return ids[:CONTEXT_LENGTH]


def tokenize_concepts(names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
    """Token ids of every concept in every template, as the official ``pre_tokenize``.

    Args:
        names: concept names, one string each (the official script reads them one a line, stripped).
        templates: prompt templates with ``{}`` where the name goes.

    Returns:
        LongTensor (K, T, 77): ``[SOT] + BPE + [EOT]``, zero padded.

    Raises:
        UsageError: ``names`` is one string or holds a non-string, or a name holds a special-token string.
    """
    if isinstance(names, str):
        raise UsageError(f"names must be a list of concept names, not one string ({names!r})")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise UsageError(f"concept names must be strings, got {bad[0]!r}")
    out = torch.zeros(len(names), len(templates), CONTEXT_LENGTH, dtype=torch.long)
    for k, name in enumerate(names):
        for t, template in enumerate(templates):
            ids = prompt_token_ids(fill_template(template, name))
            out[k, t, : len(ids)] = torch.tensor(ids)
    return out


def _causal_mask(n: int) -> torch.Tensor:
    """Additive (n, n) mask: -inf above the diagonal, so position i attends to positions <= i (official)."""
    return torch.full((n, n), float("-inf")).triu_(1)


class _TextBlocks(nn.Module):
    """The official ``Transformer``: ``resblocks.N`` (open_clip's ``ResidualAttentionBlock`` with QuickGELU and
    float32 LayerNorms, the parameter names of the official block) run on (L, N, D), the official layout, so a hook
    on it sees what a hook on the official ``lang_encoder.transformer`` sees.

    Args:
        oc: the ``open_clip.transformer`` module (imported lazily: open_clip is an extra).
        spec: the text transformer's size.
    """

    def __init__(self, oc, spec: TextArch):
        super().__init__()
        self.width, self.layers = spec.width, spec.layers
        self.resblocks = nn.ModuleList(
            oc.ResidualAttentionBlock(
                spec.width, spec.heads, act_layer=oc.QuickGELU, norm_layer=oc.LayerNormFp32, batch_first=False
            )
            for _ in range(spec.layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """(L, N, D) -> (L, N, D) under the additive ``attn_mask`` (L, L)."""
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class CLIPLanguageEncoder(nn.Module):
    """CLIP's text transformer, the official RegionCLIP ``lang_encoder`` (``CLIPLangEncoder``).

    12 pre-LN residual attention blocks with QuickGELU and the causal mask, LayerNorms that compute in float32
    (the official ``LayerNorm`` wrapper; open_clip's ``LayerNormFp32`` is the same), ``ln_final`` and
    ``text_projection``. The blocks run on (L, N, D), as the official ones. The causal mask is a non-persistent
    buffer, so ``state_dict()`` holds exactly the official keys.

    Args:
        arch: ``"RN50"`` (width 512, 8 heads, embedding 1024) or ``"RN50x4"`` (width 640, 10 heads, 640).
    """

    def __init__(self, arch: str = "RN50"):
        super().__init__()
        if arch not in TEXT_ARCHS:
            raise UsageError(f"unknown RegionCLIP text architecture {arch!r}; known: {sorted(TEXT_ARCHS)}")
        spec = TEXT_ARCHS[arch]
        oc = _open_clip_transformer()
        self.arch, self.context_length = arch, CONTEXT_LENGTH
        self.token_embedding = nn.Embedding(VOCAB_SIZE, spec.width)
        self.positional_embedding = nn.Parameter(torch.empty(CONTEXT_LENGTH, spec.width))
        self.transformer = _TextBlocks(oc, spec)
        self.ln_final = oc.LayerNormFp32(spec.width)
        self.text_projection = nn.Parameter(torch.empty(spec.width, spec.embed_dim))
        self.register_buffer("attn_mask", _causal_mask(CONTEXT_LENGTH), persistent=False)
        self._init_parameters()

    @property
    def embed_dim(self) -> int:
        """Size of a text embedding (the width of the region embeddings it is compared with)."""
        return self.text_projection.shape[1]

    def _init_parameters(self) -> None:
        """CLIP's initialisation (the official one), so an encoder that is never loaded still behaves sanely."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings (N, D) of token rows (N, L), L <= 77, as the official ``encode_text``.

        The embedding is read at ``argmax`` of each row's ids: the EOT token, the largest id. Rows may be cut
        short of 77 columns as long as every argmax position is kept: with the causal mask nothing before a
        position depends on what follows it.
        """
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens must be (N, L<={self.context_length}), got {tuple(tokens.shape)}")
        length = tokens.shape[1]
        dtype = self.transformer.resblocks[0].mlp.c_fc.weight.dtype  # the official code casts to it too
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding[:length].to(dtype)
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask[:length, :length]).permute(1, 0, 2)
        x = self.ln_final(x).to(dtype)
        eot = tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode_text`."""
        return self.encode_text(tokens)


@torch.no_grad()
def concept_embeddings(
    encoder: CLIPLanguageEncoder,
    names: Sequence[str],
    *,
    templates: Sequence[str] = PROMPT_TEMPLATES,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Concept embeddings (K, D) as ``tools/extract_concept_features.py`` makes them: per name, every template
    through :meth:`CLIPLanguageEncoder.encode_text`, then the mean over templates (no normalisation).

    Prompts run ``batch_size`` at a time, shortest first, each batch cut after its last EOT position (the causal
    mask makes the padding columns irrelevant; this is ~5x less work than 77 columns and equal up to float
    rounding), so the 1203 LVIS names take minutes on a CPU.

    Args:
        encoder: the text encoder (on any device; the prompts follow it).
        names: concept names.
        templates: prompt templates (the official 81 by default).
        batch_size: prompts per forward pass.

    Returns:
        float32 (K, D) on the CPU, ready for :func:`save_concept_embeddings`.

    Raises:
        UsageError: no templates, or a bad name (see :func:`tokenize_concepts`).
    """
    if not templates:
        raise UsageError("concept embeddings need at least one prompt template")
    tokens = tokenize_concepts(names, templates)
    k, t, _ = tokens.shape
    flat = tokens.reshape(k * t, CONTEXT_LENGTH)
    ends = flat.argmax(dim=-1)
    order = torch.argsort(ends, stable=True)
    device = encoder.positional_embedding.device
    out = torch.empty(k * t, encoder.embed_dim)
    for start in range(0, k * t, batch_size):
        rows = order[start : start + batch_size]
        keep = int(ends[rows].max()) + 1
        out[rows] = encoder.encode_text(flat[rows, :keep].to(device)).float().cpu()
    return out.view(k, t, encoder.embed_dim).mean(dim=1)


def save_concept_embeddings(path: str | Path, embeddings: torch.Tensor) -> None:
    """Write a concept-embedding file as the official script does: ``torch.save`` of one (K, D) tensor.

    Raises:
        UsageError: ``embeddings`` is not a 2-D floating-point tensor.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
        got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise UsageError(f"{path}: concept embeddings must be a floating-point (K, D) tensor, got {got}")
    # a fresh contiguous CPU copy: torch.save of a view would write the whole storage behind it
    tensor = embeddings.detach().to("cpu", copy=True).contiguous()
    atomic_write(path, lambda tmp: torch.save(tensor, tmp))


def load_concept_embeddings(path: str | Path, *, dim: int | None = None) -> torch.Tensor:
    """Read a concept-embedding file (``concept_emb/*.pth`` of the RegionCLIP release, or one written by
    :func:`save_concept_embeddings`): one tensor (K, D), e.g. (1203, 1024) for LVIS with RN50.

    A 1-D tensor (D,) is read as one concept: the official script squeezes its stacked result, so a one-concept
    vocabulary is saved that way.

    Args:
        path: the file.
        dim: the embedding size the caller needs (1024 for RN50, 640 for RN50x4); checked when given.

    Returns:
        float32 (K, D) on the CPU (the official detector copies the file into a float32 classifier).

    Raises:
        UsageError: no such file.
        DataError: the file is not a torch file, does not hold one tensor (e.g. a state dict), or holds one of the
            wrong rank, dtype or width, or with non-finite values; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such concept-embedding file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and weights_only refusals all mean "not a plain tensor file"
        raise DataError(f"{path}: not a torch.save file of a concept-embedding tensor ({e})") from e
    if not isinstance(obj, torch.Tensor):
        what = (
            f"a dict (keys {sorted(map(str, obj))[:4]})"
            if isinstance(obj, dict)
            else f"a {type(obj).__name__}"
        )
        raise DataError(f"{path}: holds {what}, not a concept-embedding tensor (K, D)")
    if obj.ndim == 1:
        obj = obj[None]
    if obj.ndim != 2:
        raise DataError(f"{path}: concept embeddings must be (K, D), got shape {tuple(obj.shape)}")
    if not obj.is_floating_point():
        raise DataError(f"{path}: concept embeddings must be floating point, got {obj.dtype}")
    if dim is not None and obj.shape[1] != dim:
        raise DataError(f"{path}: embeddings of size {obj.shape[1]}, the model needs {dim}")
    if not torch.isfinite(obj).all():
        raise DataError(f"{path}: concept embeddings hold non-finite values")
    return obj.float()
