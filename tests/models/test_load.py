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


# ---------------------------------------------------------------- the cache of de-quantised models


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A stand-in for the GGUF (only its checksum matters to the cache) and a cache root of our own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF stand-in")
    return path


@pytest.fixture
def builder(tiny_model_dir):
    calls = []

    def build():
        calls.append(1)
        return load_model(str(tiny_model_dir))

    build.calls = calls
    return build


def cache_folder(source):
    from tokentilt.models.load import cache_root

    (folder,) = [p for p in cache_root().iterdir() if not p.name.startswith(".")]
    return folder


IDS = torch.tensor([[15496, 995, 318]])


def test_the_second_load_reads_the_cache_with_the_same_weights_and_tokenizer(source, builder, tmp_path):
    from tokentilt.models.load import MANIFEST, cached

    first, tok = cached(source, builder)
    again, tok2 = cached(source, builder)
    assert len(builder.calls) == 1
    folder = cache_folder(source)
    assert folder.parent == tmp_path / "xdg" / "tokentilt"
    assert (folder / "model.safetensors").is_file() and (folder / MANIFEST).is_file()
    assert torch.equal(first(IDS).logits, again(IDS).logits)
    assert tok2("Hello world").input_ids == tok("Hello world").input_ids and tok2.pad_token == tok.pad_token
    assert cached(source, builder, torch.bfloat16)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("damage", ["truncate", "flip", "extra file", "manifest"])
def test_a_damaged_cache_is_rebuilt_not_trusted(source, builder, damage, capfd):
    from tokentilt.models.load import MANIFEST, cached

    reference, _ = cached(source, builder)
    folder = cache_folder(source)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # still a valid safetensors file: only the checksum can tell
        weights.write_bytes(data[:-8] + bytes(b ^ 1 for b in data[-8:]))
    elif damage == "extra file":
        (folder / "stray.bin").write_bytes(b"?")
    else:
        (folder / MANIFEST).write_text("{not json")
    model, _ = cached(source, builder)
    assert len(builder.calls) == 2
    err = capfd.readouterr().err
    assert err.startswith("tokentilt: rebuilding the cached model") and err.count("\n") == 1
    assert torch.equal(model(IDS).logits, reference(IDS).logits)
    cached(source, builder)
    assert len(builder.calls) == 2  # the rebuilt cache is good again


def test_another_gguf_gets_its_own_cache_folder(source, builder):
    from tokentilt.models.load import cache_root, cached

    cached(source, builder)
    source.write_bytes(b"another GGUF")
    cached(source, builder)
    assert len(builder.calls) == 2
    assert len([p for p in cache_root().iterdir()]) == 2


def test_an_unwritable_cache_costs_only_time(source, builder, tmp_path, monkeypatch, capfd):
    from tokentilt.models.load import cached

    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))
    model, _ = cached(source, builder)
    assert model(IDS).logits.shape == (1, 3, 50257)
    assert capfd.readouterr().err.startswith("tokentilt: cannot cache the de-quantised model")


def test_a_save_that_fails_midway_leaves_no_cache_folder(source, builder, monkeypatch, capfd):
    import tokentilt.models.load as load
    from tokentilt.models.load import cache_root, cached

    def broken_save(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(load, "save_model", broken_save)
    cached(source, builder)
    assert list(cache_root().iterdir()) == []
    assert "No space left on device" in capfd.readouterr().err
