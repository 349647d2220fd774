import pytest

from tokentilt.config import UsageError
from tokentilt.preflight import BUNDLED_CONTEXT, check_lengths, model_context


def test_context_comes_from_config_json(tiny_model_dir, tmp_path):
    assert model_context(str(tiny_model_dir)) == 128  # GPT-2's n_positions
    check_lengths(str(tiny_model_dir), seq_len=128)
    with pytest.raises(UsageError, match="seq-len 129 is beyond the model's context of 128 tokens"):
        check_lengths(str(tiny_model_dir), seq_len=129)
    (tmp_path / "config.json").write_text("{not json")
    assert model_context(str(tmp_path)) is None  # load_model reports the corrupt file itself
    assert model_context("some-org/some-model") is None


@pytest.mark.slow
def test_the_bundled_context_matches_the_gguf():
    import gguf

    from tokentilt.models.load import BUNDLED_FILE, bundled_dir

    reader = gguf.GGUFReader(str(bundled_dir() / BUNDLED_FILE))
    field = reader.fields["llama.context_length"]
    assert int(field.parts[field.data[0]][0]) == BUNDLED_CONTEXT
