"""The official RegionCLIP text path (``tools/extract_concept_features.py``) against the conformance reference
``shared/reference/regionclip_rn50`` (README sections 3-4): templates, token ids, the ``lang_encoder`` stages,
prompt and class embeddings, and the concept-embedding files.

Tolerance: README section 6 suggests relative L2 1e-5 for every ``text.*`` stage (its noise floor, fp64 vs fp32,
is ~6e-7). Measured here: the embedding stage is exact, prompt embeddings are bit-exact on this CPU, the transformer
output differs by ~5e-7 at positions >= 16 (CPU kernel reductions).
"""

from __future__ import annotations

import pytest
import torch

from openglip.conformance import read_shape_table, regionclip_fill, relative_l2
from openglip.errors import DataError, UsageError
from openglip.regionclip.clip_text import (
    CONTEXT_LENGTH,
    PROMPT_TEMPLATES,
    CLIPLanguageEncoder,
    concept_embeddings,
    fill_template,
    load_concept_embeddings,
    prompt_token_ids,
    save_concept_embeddings,
    tokenize_concepts,
)

from .conftest import require_reference

TEXT_TOL = 1e-5  # README section 6: `text.*`, samples / full, relative L2
PREFIX = "lang_encoder."


@pytest.fixture(scope="module")
def root():
    return require_reference("regionclip_rn50")


@pytest.fixture(scope="module")
def reference(root):
    return torch.load(root / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def lang_rows(root):
    return [r for r in read_shape_table(root / "state_dict_shapes.tsv") if r["key"].startswith(PREFIX)]


@pytest.fixture(scope="module")
def encoder(reference, lang_rows):
    """The RN50 text encoder with the reference's deterministic weights, loaded strictly."""
    state = regionclip_fill(lang_rows, reference["inputs"]["given_emb"])
    enc = CLIPLanguageEncoder("RN50").eval()
    enc.load_state_dict({k.removeprefix(PREFIX): v for k, v in state.items()}, strict=True)
    return enc


@pytest.fixture(scope="module")
def text_run(encoder, reference):
    """One official-layout pass per concept (81 prompts x 77 tokens), capturing the stages with hooks on the
    same modules the reference hooked: ``transformer`` input/output (LND) and ``ln_final`` (NLD)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        encoder.transformer.register_forward_pre_hook(lambda m, a: captured.__setitem__("in", a[0].clone())),
        encoder.transformer.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o.clone())),
        encoder.ln_final.register_forward_hook(lambda m, a, o: captured.__setitem__("ln", o.clone())),
    ]
    stages, prompts = {}, []
    try:
        with torch.no_grad():
            for c, tokens in enumerate(reference["text"]["tokens"]):
                prompts.append(encoder.encode_text(tokens))
                stages[f"text.transformer_in.c{c}"] = captured["in"]
                stages[f"text.transformer_out.c{c}"] = captured["out"]
                stages[f"text.ln_final.c{c}"] = captured["ln"]
    finally:
        for h in hooks:
            h.remove()
    stages["text.prompt_embeddings"] = torch.stack(prompts)
    return stages


def _full_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def test_prompt_templates_are_the_official_81(reference):
    assert tuple(reference["text"]["prompt_templates"]) == PROMPT_TEMPLATES
    assert len(PROMPT_TEMPLATES) == 81


def test_token_ids_equal_the_official_pre_tokenize(reference):
    tokens = tokenize_concepts(reference["inputs"]["vocab"])
    assert tokens.dtype == torch.long and tokens.shape == (4, 81, CONTEXT_LENGTH)
    assert torch.equal(tokens, reference["text"]["tokens"])


def test_official_prompt_quirks():
    # the official prompt_engineering deletes commas and turns "+" into a space
    assert fill_template("a photo of a {}.", "hot dog, with+mustard") == "a photo of a hot dog with mustard."
    assert prompt_token_ids("a photo of a cat.") == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    # a prompt over 77 ids is cut after EOT was appended: it keeps SOT, loses EOT (official truncation)
    long = prompt_token_ids("a photo of a " + "very " * 100 + "big cat.")
    assert len(long) == CONTEXT_LENGTH and long[0] == 49406 and 49407 not in long
    with pytest.raises(UsageError, match="special-token"):
        tokenize_concepts(["cat<|endoftext|>"])
    with pytest.raises(UsageError, match="one string"):
        tokenize_concepts("cat")
    assert tokenize_concepts([]).shape == (0, 81, CONTEXT_LENGTH)


@pytest.mark.slow
def test_state_dict_is_the_official_lang_encoder(encoder, lang_rows):
    ours = {PREFIX + k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == {
        r["key"]: r["shape"] for r in lang_rows
    }  # every official key, no extra (the mask is not kept)
    assert encoder.embed_dim == 1024
    rn50x4 = CLIPLanguageEncoder("RN50x4")
    assert rn50x4.text_projection.shape == (640, 640) and rn50x4.positional_embedding.shape == (77, 640)
    assert rn50x4.transformer.resblocks[11].attn.in_proj_weight.shape == (1920, 640)
    with pytest.raises(UsageError, match="RN101"):
        CLIPLanguageEncoder("RN101")


@pytest.mark.slow
def test_text_stages_match_the_official_reference(text_run, reference):
    ref = reference["text"]["stages"]
    names = [f"text.{s}.c{c}" for c in range(4) for s in ("transformer_in", "transformer_out", "ln_final")]
    for name in names:
        got = text_run[name]
        assert list(got.shape) == list(ref[name]["shape"]), name
        assert relative_l2(got, ref[name]) < TEXT_TOL, (name, relative_l2(got, ref[name]))
    prompts = text_run["text.prompt_embeddings"]
    assert prompts.shape == (4, 81, 1024)
    assert _full_rel(prompts, ref["text.prompt_embeddings"]["full"]) < TEXT_TOL


@pytest.mark.slow
def test_concept_embeddings_match_the_official_class_embeddings(encoder, reference, text_run):
    ref = reference["text"]["stages"]["text.class_embeddings"]["full"]
    # batched, shortest prompts first, each batch cut after its last EOT: still the official numbers
    emb = concept_embeddings(encoder, reference["inputs"]["vocab"], batch_size=100)
    assert emb.shape == (4, 1024) and emb.dtype == torch.float32
    assert _full_rel(emb, ref) < TEXT_TOL
    # the official script: mean over the 81 full-length prompt embeddings, no per-prompt normalisation
    assert _full_rel(text_run["text.prompt_embeddings"].mean(1), ref) < TEXT_TOL
    assert concept_embeddings(encoder, []).shape == (0, 1024)
    with pytest.raises(UsageError, match="template"):
        concept_embeddings(encoder, ["cat"], templates=())


def test_concept_embedding_file_round_trip(tmp_path):
    emb = torch.randn(65, 1024, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "concept_emb" / "custom_65_cls_emb.pth"
    save_concept_embeddings(path, emb)
    assert isinstance(torch.load(path, weights_only=True), torch.Tensor)  # the official format: a bare tensor
    assert torch.equal(load_concept_embeddings(path, dim=1024), emb)
    # half precision is read as float32, as the official detector copies it into a float32 classifier
    save_concept_embeddings(path, emb.half())
    assert load_concept_embeddings(path).dtype == torch.float32
    # the official script squeezes its stack, so a one-concept vocabulary is saved as (D,): read as (1, D)
    torch.save(emb[0], path)
    assert torch.equal(load_concept_embeddings(path, dim=1024), emb[:1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weight": torch.zeros(3, 4)}, "holds a dict"),
        ([torch.zeros(3, 4)], "holds a list"),
        (torch.zeros(2, 3, 4), "must be \\(K, D\\)"),
        (torch.zeros((), dtype=torch.float32), "must be \\(K, D\\)"),
        (torch.zeros(3, 4, dtype=torch.long), "floating point"),
        (torch.zeros(3, 640), "size 640, the model needs 1024"),
        (torch.tensor([[0.0, float("nan")]]), "non-finite"),
        (b"not a torch file", "not a torch.save file"),
    ],
)
def test_bad_concept_embedding_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad_emb.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    dim = 1024 if "640" in message else None
    with pytest.raises(DataError, match=message) as err:
        load_concept_embeddings(path, dim=dim)
    assert str(path) in str(err.value)


def test_missing_file_and_bad_tensor_to_save(tmp_path):
    with pytest.raises(UsageError, match="no such concept-embedding file"):
        load_concept_embeddings(tmp_path / "absent.pth")
    with pytest.raises(UsageError, match="\\(K, D\\)"):
        save_concept_embeddings(tmp_path / "x.pth", torch.zeros(4))
    assert not (tmp_path / "x.pth").exists()
