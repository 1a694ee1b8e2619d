import pytest
import torch

from prismrl.data.text_dropout import apply_text_dropout, drop_words


def test_p_zero_keeps_the_caption():
    assert drop_words("a  handwritten seven", 0.0, torch.Generator().manual_seed(0)) == "a  handwritten seven"


def test_invalid_p_raises():
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"p: expected a word-drop probability in \[0, 1\)"):
            drop_words("a b", p)
    with pytest.raises(ValueError, match="p:"):
        apply_text_dropout(["a"], 2.0)


def test_matches_a_naive_reference_with_the_same_generator():
    caption = "one two three four five six seven eight"
    out = drop_words(caption, 0.5, torch.Generator().manual_seed(3))
    u = torch.rand(8, generator=torch.Generator().manual_seed(3))
    expected = " ".join(w for w, x in zip(caption.split(), u.tolist()) if x >= 0.5)
    assert out == expected


def test_keeps_at_least_one_word_and_words_stay_in_order():
    generator = torch.Generator().manual_seed(0)
    words = "alpha beta gamma delta".split()
    for _ in range(200):
        out = drop_words(" ".join(words), 0.99, generator).split()
        assert len(out) >= 1
        assert out == [w for w in words if w in out]
    assert drop_words("", 0.5) == ""


def test_drop_rate_is_about_p():
    generator = torch.Generator().manual_seed(1)
    captions = ["w " * 50] * 40
    kept = sum(len(c.split()) for c in apply_text_dropout(captions, 0.3, generator))
    assert abs(kept / 2000 - 0.7) < 0.04


def test_seeded_generator_is_deterministic():
    captions = ["the digit seven written by hand", "a scanned image of the number two"]
    a = apply_text_dropout(captions, 0.4, torch.Generator().manual_seed(5))
    b = apply_text_dropout(captions, 0.4, torch.Generator().manual_seed(5))
    assert a == b and len(a) == 2
