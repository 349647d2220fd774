"""The simulated Llama models: sizes from the config alone (meta device), and a real 128k tokenizer."""

import dataclasses

import pytest
import torch

from tokentilt.models import simulated


@pytest.mark.parametrize("size", ["0.5b", "1b"])
def test_parameter_count_is_within_ten_percent_of_the_name(size):
    shape = simulated.SIZES[size]
    n = simulated.param_count(shape)  # on the meta device: no gigabytes allocated
    assert abs(n - simulated.NOMINAL[size]) <= 0.1 * simulated.NOMINAL[size]
    assert shape.vocab == 128_256
    # by hand: the tied embedding, then per layer q and o (d x d), k and v (d x d/4), the MLP (3 x d x 4d), 2 norms
    d, layers = shape.hidden, shape.layers
    per_layer = 2 * d * d + 2 * d * (d // 4) + 3 * d * shape.intermediate + 2 * d
    assert n == 128_256 * d + layers * per_layer + d


@pytest.fixture(scope="module")
def tokenizer():
    return simulated.build_tokenizer()


def test_the_tokenizer_has_the_vocabulary_and_round_trips_text(tokenizer):
    assert len(tokenizer) == simulated.VOCAB_SIZE
    assert sorted(tokenizer.get_vocab().values()) == list(range(simulated.VOCAB_SIZE))  # every id a token
    for text in ("The king said: to be, or not to be.", "  naïve café 日本\n\n\tx = 42;", "extra fox boxes"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert len(tokenizer(" water water water", add_special_tokens=False)["input_ids"]) == 3  # a frequent word is one
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)


def test_the_chat_template_marks_turns_with_single_special_tokens(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 3 and ids.count(2) == 2  # three turns opened, two closed


def test_a_saved_tiny_model_loads_and_predicts_over_the_vocabulary(tmp_path, tokenizer):
    from tokentilt.models.load import load_model

    shape = simulated.SIZES["tiny"]
    n = simulated.save(shape, tmp_path / "m", tokenizer=tokenizer)
    assert n == simulated.param_count(shape)
    model, tok = load_model(str(tmp_path / "m"))
    assert len(tok) == simulated.VOCAB_SIZE and tok.chat_template == simulated.CHAT_TEMPLATE
    logits = model(input_ids=torch.tensor([tok("The king said")["input_ids"]])).logits
    assert logits.shape[-1] == simulated.VOCAB_SIZE


def test_a_smaller_vocabulary_is_grown_or_trained_to_its_size():
    tok = simulated.build_tokenizer(4096, text=simulated.synthetic_text(20_000))
    assert len(tok) == 4096
    assert dataclasses.replace(simulated.SIZES["tiny"], vocab=4096).vocab == 4096
