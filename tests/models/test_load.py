import pytest
import torch

from tokentilt.models.load import ModelLoadError, bundled_dir, load_model, save_model


def test_local_folder_round_trip(tmp_path, tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    save_model(model, tokenizer, tmp_path / "copy")
    again, _ = load_model(str(tmp_path / "copy"))
    ids = torch.tensor([[15496, 995]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert (tmp_path / "copy" / "model.safetensors").exists()


def test_missing_folder_and_non_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache") as err:
        load_model("no-such-org/no-such-model")
    assert "\n" not in str(err.value)


def test_bundled_file_is_found_without_importing_the_package():
    assert (bundled_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size > 90_000_000
