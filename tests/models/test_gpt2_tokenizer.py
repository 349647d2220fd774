from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer


def test_vocabulary_and_special_tokens():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok.eos_token == tok.bos_token == tok.unk_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == 50256
    assert tok("<|endoftext|>").input_ids == [50256]


def test_known_encodings():
    tok = gpt2_tokenizer()
    assert tok("Hello world").input_ids == [15496, 995]
    assert tok.convert_ids_to_tokens([995]) == ["Ġworld"]
    assert tok.decode([995]) == " world"


def test_decode_round_trip():
    tok = gpt2_tokenizer()
    text = " Exeunt, pursued by a bear.\n\nHAMLET:  To be, or not to be... naïve café 😀 x-ray"
    assert tok.decode(tok(text).input_ids) == text


def test_each_call_is_independent():
    a, b = gpt2_tokenizer(), gpt2_tokenizer()
    a.padding_side = "left"
    assert b.padding_side == "right"
