"""Captions, phrase spans, token spans, positive maps, chunking and noun phrases."""

from __future__ import annotations

import pytest

from openglip.prompts import (
    Prompt,
    PromptError,
    build_prompt,
    chunk_prompt,
    load_tokenizer,
    num_tokens,
    parse_prompt,
    positive_map,
    rule_based_noun_phrases,
    split_caption,
    token_spans,
)


def test_build_prompt_spans_point_at_the_names():
    p = build_prompt(["person", "red  car", "traffic light"])
    assert p.caption == "person. red car. traffic light"
    for phrase, ((s, e),) in zip(p.phrases, p.spans):
        assert p.caption[s:e] == phrase


def test_split_caption_matches_glip_reference_spans():
    p = split_caption("cat. dog. person.")
    assert p.phrases == ("cat", "dog", "person")
    assert p.spans == (((0, 3),), ((5, 8),), ((10, 16),))


def test_token_spans_and_positive_map_of_the_reference_caption():
    caption = "cat. dog. person."
    enc = load_tokenizer()([caption])
    assert enc["input_ids"][0] == [101, 4937, 1012, 3899, 1012, 2711, 1012, 102]
    spans = token_spans(enc[0], split_caption(caption))
    assert spans == [[1], [3], [5]]
    pmap = positive_map(spans, 8)
    assert pmap.shape == (3, 8) and pmap.sum().item() == 3 and pmap[1, 3] == 1


def test_multi_token_phrase_covers_all_its_tokens():
    p = build_prompt(["hexagonal traffic-light"])
    enc = load_tokenizer()([p.caption])
    spans = token_spans(enc[0], p)
    n = len(enc["input_ids"][0]) - 2
    assert spans == [list(range(1, n + 1))]


@pytest.mark.parametrize("bad", ["", "   ", [], ["cat", "  "]])
def test_empty_prompts_are_refused(bad):
    with pytest.raises(PromptError):
        parse_prompt(bad)


def test_prompt_without_phrases_is_refused():
    with pytest.raises(PromptError, match="no phrase"):
        parse_prompt(" . . .")
    with pytest.raises(PromptError, match="no phrase"):
        parse_prompt("the of and with")


def test_free_text_is_split_into_noun_phrases():
    p = parse_prompt("a red car parked next to the small dog")
    assert p.phrases == ("red car", "small dog")
    assert rule_based_noun_phrases("a building with a painting") == [(2, 10), (18, 26)]


def test_prompt_validates_spans():
    with pytest.raises(ValueError):
        Prompt("cat", ("cat",), (((0, 9),),))


def test_long_prompt_is_chunked_without_losing_a_phrase():
    names = [f"object number {i} with a rather long descriptive name" for i in range(120)]
    prompt = build_prompt(names)
    assert num_tokens(prompt.caption) > 1000
    chunks = chunk_prompt(prompt, 256)
    assert len(chunks) > 4
    seen = []
    for part, offset in chunks:
        assert num_tokens(part.caption) <= 256
        assert offset == len(seen)
        seen.extend(part.phrases)
    assert seen == list(prompt.phrases)


def test_short_prompt_is_one_chunk_and_a_huge_phrase_is_an_error():
    prompt = build_prompt(["cat", "dog"])
    assert chunk_prompt(prompt, 256) == [(prompt, 0)]
    with pytest.raises(PromptError, match="alone"):
        chunk_prompt(build_prompt(["word " * 300, "cat"]), 256)


def test_repeated_phrases_are_merged_keeping_the_first():
    """Bug: ``cat. cat. dog.`` gave every cat box twice (once per copy of the phrase)."""
    p = parse_prompt("cat. cat. dog. Cat .")
    assert p.phrases == ("cat", "dog") and p.spans == (((0, 3),), ((10, 13),))
    q = build_prompt(["cat", "dog", "CAT", " dog "])
    assert q.caption == "cat. dog" and q.phrases == ("cat", "dog")
    r = parse_prompt("a cat next to a cat")
    assert r.phrases == ("cat",) and r.spans == (((2, 5),),)


def test_long_text_tokenized_knowingly_gives_no_length_warning(capfd):
    """Bug: transformers warned "(1002 > 512) ... indexing errors" although chunking handles long prompts."""
    tok = load_tokenizer()
    tok.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)  # warns once
    prompt = build_prompt([f"object number {i} with a rather long descriptive name" for i in range(120)])
    assert num_tokens(prompt.caption) > 512
    assert len(chunk_prompt(prompt, 256)) > 4
    err = capfd.readouterr().err
    assert "indexing errors" not in err and "longer than the specified maximum" not in err
    # transformers records that it warned (its handler may write where capfd cannot see)
    assert not tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")
