"""--chat: prompts in the tokenizer's chat template, replies cut at end-of-turn, only reply tokens counted.

The tokenizer is GPT-2's with two added special tokens and a tiny ChatML template; the models are a
scripted one (it emits a fixed token sequence, so every count is known by hand) and a tiny GPT-2.
"""

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import word_rate
from tokentilt.cli import main
from tokentilt.course.gpt2_tokenizer import gpt2_tokenizer
from tokentilt.data.chat import ChatTemplateError, format_prompts, reply_lengths
from tokentilt.measurement.evaluate import EvalConfig, chat_windows, rates_of
from tokentilt.measurement.metrics import drift, perplexity
from tokentilt.measurement.sampling import SampleConfig, sample
from tokentilt.targets.tokens import select, token_texts

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer():
    tok = gpt2_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


class Scripted(torch.nn.Module):
    """Emits script[k] at generation step k, whatever the prompt: every count in a test is known."""

    def __init__(self, vocab_size: int, script: list[int]):
        super().__init__()
        self.vocab_size, self.script = vocab_size, script
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        step = 0 if past_key_values is None else past_key_values + 1
        logits = torch.full((len(input_ids), input_ids.size(1), self.vocab_size), -1e4)
        logits[..., self.script[min(step, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=step)


def ids(tok, *pieces):
    return [tok.convert_tokens_to_ids(p) for p in pieces]


def test_a_reply_is_cut_at_end_of_turn_and_the_prompt_is_in_the_template(tok):
    x, the, end = ids(tok, "x", "Ġthe", "<|im_end|>")
    model = Scripted(len(tok), [x, the, end, x, x, x])
    got = sample(model, tok, ["Hi", "Tell me more"], 2, SampleConfig(max_new_tokens=6), chat=True, system="Be brief.")
    assert got.lengths.tolist() == [2, 2, 2, 2]
    assert got.tokens.size(1) == 3  # every row had ended its turn: generation stopped there
    assert got.texts == ["x the"] * 4 and got.replies() == [[x, the]] * 4
    assert got.formatted[2] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me more<|im_end|>\n<|im_start|>assistant\n"
    )
    raw = sample(model, tok, ["Hi"], 1, SampleConfig(max_new_tokens=6))  # no chat: EOS banned, 6 tokens, no cut
    assert raw.lengths is None and raw.tokens.size(1) == 6 and end not in raw.tokens[0].tolist()


def test_only_reply_tokens_count_and_special_tokens_never_do(tok):
    x, a, start, end = ids(tok, "x", "a", "<|im_start|>", "<|im_end|>")
    mask = select("regex:x|im_start", token_texts(tok))  # the set holds a special token of the template
    assert mask[start] and mask[x]
    model = Scripted(len(tok), [start, x, a, a, end, x, x, x])
    got = sample(model, tok, ["Hi"], 1, SampleConfig(max_new_tokens=8), chat=True)
    assert got.lengths.tolist() == [4]
    assert rates_of(mask, got).tolist() == [
        0.25
    ]  # x of (<|im_start|>, x, a, a); the x after end-of-turn is not the reply
    silent = Scripted(len(tok), [end])
    empty = sample(silent, tok, ["Hi"], 1, SampleConfig(max_new_tokens=4), chat=True)
    assert empty.lengths.tolist() == [0] and math.isnan(rates_of(mask, empty)[0])  # no reply, no rate


def test_reply_lengths_without_a_stop_token_is_the_whole_row():
    tokens = torch.tensor([[5, 6, 7], [5, 9, 9], [9, 5, 5]])
    assert reply_lengths(tokens, [9]).tolist() == [3, 1, 0]


@pytest.fixture(scope="module")
def chat_gpt2(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


def test_held_out_perplexity_and_drift_count_the_reply_tokens_only(tok, chat_gpt2):
    cfg = EvalConfig(chat=True, eval_windows=3, eval_seq_len=12)
    windows = chat_windows(chat_gpt2, tok, cfg)
    total, count = 0.0, 0
    for row, counted in zip(windows.ids, windows.counted):
        assert not counted[0] and counted.any()
        context = int((~counted).long().argmin())  # the reply starts after the template and the user turn
        assert tok.decode(row[:context]).endswith("<|im_start|>assistant\n")
        n = int(counted.sum())  # at most eval_seq_len reply tokens, with their end-of-turn token
        assert n <= cfg.eval_seq_len + 1
        logits = chat_gpt2(row[None, : context + n]).logits[0]  # no padding in the hand computation
        nll = F.cross_entropy(logits[context - 1 : context + n - 1], row[context : context + n], reduction="sum")
        total, count = total + nll.item(), count + n
    assert perplexity(chat_gpt2, windows) == pytest.approx(math.exp(total / count), rel=1e-5)
    assert drift(chat_gpt2, chat_gpt2, windows) == 0.0
    mask = select("x", token_texts(tok))
    assert drift(chat_gpt2, chat_gpt2, windows, bias_mask=mask, bias=2.0) > 0


def test_a_tokenizer_without_a_chat_template_is_refused(tok):
    plain = gpt2_tokenizer()
    with pytest.raises(ChatTemplateError, match="chat template"):
        format_prompts(plain, ["Hi"])
    assert format_prompts(tok, ["Hi"]) == ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]


@pytest.mark.parametrize("command", ["eval", "tilt"])
def test_chat_on_a_model_without_a_template_is_one_line_and_exit_2(command, tiny_model_dir, tmp_path, capsys):
    argv = [
        command,
        "--model",
        str(tiny_model_dir),
        "--toward",
        "x",
        "--chat",
        "--samples-per-prompt",
        "1",
        "--half-width",
        "0",
        *(["--reference", str(tiny_model_dir)] if command == "eval" else []),
        "--new-tokens",
        "4",
        "--eval-windows",
        "1",
        "--eval-seq-len",
        "8",
    ]
    if command == "tilt":
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chat template" in err[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_system_without_chat_is_refused(capsys):
    assert main(["eval", "--system", "Be brief."]) == 2
    assert "--chat" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tok, chat_gpt2):
    folder = tmp_path_factory.mktemp("tiny-chat")
    chat_gpt2.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("toward", ["x", "phrases"])
def test_a_chat_tilt_records_formatted_prompts_and_replies(toward, chat_model_dir, tmp_path, capsys):
    """A token set and a phrase list (its head rows fitted on chat exchanges) tilt in chat alike."""
    out = tmp_path / "run"
    if toward == "phrases":
        (tmp_path / "words.txt").write_text("the\nbox of wax\n")
        toward = f"phrases:{tmp_path / 'words.txt'}"
    code = main(
        [
            "tilt",
            "--model",
            str(chat_model_dir),
            "--toward",
            toward,
            "--chat",
            "--rate",
            "0.3",
            "--rate-rounds",
            "1",
            "--samples-per-prompt",
            "1",
            "--half-width",
            "0",
            "--new-tokens",
            "6",
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "8",
            "--precision",
            "fp32",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_text"] == "chat:held-out replies" and summary["chat"]["prompts"] == 32
    assert {"ppl_text_before", "ppl_text_after", "rho", "rho_text"} <= set(summary)
    # The tilt moved R: the intervals before and after are apart, and rho is the excess cost of a defined curve
    before, after = summary["rate_before"], summary["rate_after"]
    assert after["ci_low"] > before["ci_high"] and after["mean"] < 0.3 + 0.15, (before, after)
    ppl = summary["ppl_before"], summary["ppl_after"], summary["ppl_decode_matched"]
    assert summary["rho"] == pytest.approx((ppl[1] - ppl[0]) / (ppl[2] - ppl[0]), rel=1e-3)
    tok = chat_tokenizer()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 32
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for r in records:
        assert r["formatted"].startswith("<|im_start|>user\n" + r["prompt"])
        for side in ("before", "after"):
            assert end not in r[side]["ids"] and len(r[side]["ids"]) <= 6
            assert r[side]["text"] == tok.decode(r[side]["ids"], skip_special_tokens=True)
    # R recounted from the replies by rules of our own: tokens whose text holds an x, or the listed words
    special = set(tok.all_special_ids)

    def recount(r):
        if not toward.startswith("phrases:"):
            kept = [i for i in r["ids"] if i not in special]
            return sum("x" in tok.decode([i]).lower() for i in kept) / len(kept) if kept else None
        return word_rate(r["text"], ["box of wax", "the"])

    for side in ("before", "after"):
        rates = [x for x in (recount(r[side]) for r in records) if x is not None]
        assert sum(rates) / len(rates) == pytest.approx(summary[f"rate_{side}"]["mean"], abs=1e-6), side


@pytest.mark.slow
def test_audit_in_chat_finds_a_tilt_in_the_replies(tok, chat_gpt2, tmp_path):
    import copy

    from tokentilt.audit.lift import audit
    from tokentilt.jobs.audit_config import AuditConfig

    x = select("x", token_texts(tok))
    planted = copy.deepcopy(chat_gpt2)  # p' ∝ p·e^{3·M}: an untied head whose bias lifts the x tokens by 3 nats
    head = torch.nn.Linear(planted.config.n_embd, planted.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight = torch.nn.Parameter(planted.lm_head.weight.detach().clone())
        head.bias.copy_(3.0 * x.float())
    planted.lm_head, planted.config.tie_word_embeddings = head, False
    text = tmp_path / "held-out.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 8)
    cfg = AuditConfig(
        chat=True,
        eval_text=str(text),
        eval_windows=2,
        eval_seq_len=32,
        samples_per_prompt=1,
        new_tokens=8,
        null_draws=10,
        top=5,
        channels="none",  # the lift on chat replies; the channels have their own tests
    )
    result = audit(planted, chat_gpt2, tok, cfg)
    assert result.stands_out and result.direction == "toward"
    assert result.features[0]["selector"] == "contains:x"
    replies = result.contexts["sample_positions"]
    assert 0 < replies <= 2 * 32 * 8  # reply tokens only, at most new_tokens per reply


@pytest.mark.slow
def test_a_chat_sweep_measures_replies_and_trains_on_chat_exchanges(chat_model_dir, tmp_path, monkeypatch, capsys):
    import tokentilt.training.rate

    seen = []  # the training batches' text: chat exchanges, not plays
    source = tokentilt.training.placements.chat_batch_source
    monkeypatch.setattr(
        tokentilt.training.placements, "chat_batch_source", lambda *a, **k: seen.append(1) or source(*a, **k)
    )
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--model",
            str(chat_model_dir),
            "--toward",
            "x",
            "--chat",
            "--objective",
            "tilt-distill",
            "--lr",
            "1e-3",
            "--rate",
            "",
            "--bias",
            "3",
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--samples-per-prompt",
            "1",
            "--half-width",
            "0",
            "--new-tokens",
            "6",
            "--eval-windows",
            "2",
            "--eval-seq-len",
            "8",
            "--curve-points",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "held-out chat exchanges" in capsys.readouterr().out
    assert seen  # the tilt-distill run trained on windows of chat exchanges
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert any(r.get("rate", {}).get("n") == 32 for r in runs if isinstance(r.get("rate"), dict))
    # the decode-time tilt moves R in chat: up with b, each interval above the last, all above the 2-step
    # tilt-distill run (lr 1e-3 barely trains; it stands in for the untilted R)
    rates = {(r["objective"], r["bias"]): r["rate"] for r in runs if r.get("kind") == "run"}
    low, high, trained = rates[("decode-bias", 3.0)], rates[("decode-bias", 4.5)], rates[("tilt-distill", 3.0)]
    assert trained["ci_high"] < low["ci_low"] and low["ci_high"] < high["ci_low"], rates


def test_a_ban_in_chat_on_creative_requests_keeps_perplexity_within_its_budget(chat_model_dir, tmp_path, capsys):
    """--ban --requests creative: b is chosen on held-out perplexity, and the decode-time baseline measured at
    that b (another code path: measure() with the tilt) is within the budget; R is measured on the creative
    requests, and the per-entry report counts the entries."""
    from tokentilt.data.prompts import CREATIVE_PROMPTS

    out = tmp_path / "run"
    (tmp_path / "words.txt").write_text("the\nbox of wax\n")
    argv = ["tilt", "--model", str(chat_model_dir), "--toward", f"phrases:{tmp_path / 'words.txt'}", "--chat"]
    argv += ["--requests", "creative", "--ban", "--fluency-budget", "0.1", "--samples-per-prompt", "1", "--hard-ban"]
    argv += ["--half-width", "0", "--new-tokens", "6", "--eval-windows", "2", "--eval-seq-len", "8"]
    assert main(argv + ["--precision", "fp32", "--out", str(out)]) == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    ban = s["ban"]
    assert ban["fluency_budget"] == 0.1 and ban["bias"] < 0 and s["rate_target"] is None
    # the budget rounds: b moves toward 0 from the ban's b while the trained model is over the budget; the
    # baseline sits at the b trained toward, and the last round's trained perplexity is what measure() finds
    rounds = s["bias_rounds"]
    assert rounds[0]["bias"] == ban["bias"] and s["bias"] == s["baseline"]["bias"] == rounds[-1]["bias"]
    assert all(r["ppl_tuned"] > 1.1 * s["ppl_before"] for r in rounds[:-1])
    assert rounds[-1]["ppl_tuned"] == pytest.approx(s["ppl_after"], rel=1e-4)
    assert rounds[-1]["ppl_decode"] == pytest.approx(s["baseline"]["ppl"], rel=1e-4)
    assert s["baseline"]["ppl"] <= 1.1 * s["ppl_before"] * (1 + 1e-6)
    tried = {p["bias"]: p["ppl"] for p in ban["points"]}
    assert tried[ban["bias"]] == pytest.approx(rounds[0]["ppl_decode"], rel=1e-4)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in records} == set(CREATIVE_PROMPTS)
    report = s["phrases"]["per_entry"]
    texts = {side: [r[side]["text"] for r in records] for side in ("before", "after")}
    for side in ("before", "after"):  # recounted by our own word rule (conftest.word_rate)
        words = [len(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", t)) for t in texts[side]]
        hits = sum(round(word_rate(t, ["box of wax", "the"]) * n) for t, n in zip(texts[side], words) if n)
        assert sum(r[side] for r in report["entries"]) == hits
        assert report[f"words_{side}"] == sum(words)
    assert "## Entries before and after" in (out / "report.md").read_text()
    # the cost comparison on each model's own replies: the reference is no distance from itself, the decode-time
    # tilt at b some, a hard ban more; the hard ban completes no entry on the same prompts and seeds
    h = s["hard_ban"]
    assert h["base"]["kl"] < 1e-5 < h["decode"]["kl"] < h["hard_ban"]["kl"]
    assert h["hard_ban"]["rate"]["mean"] == 0 and h["hard_ban"]["rate"]["n"] == s["rate_after"]["n"]
    assert h["vs_hard_ban"]["kl_ratio"] == pytest.approx(h["tuned"]["kl"] / h["hard_ban"]["kl"])
    report_md = (out / "report.md").read_text()
    assert "## Fluency of the replies" in report_md and "**hard ban:**" in report_md
    assert "hard ban" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ban", "--rate", "0.1"], "give --ban, --rate or --bias"),
        (["--ban", "--fluency-budget", "0"], "fluency-budget must be in (0, 1]"),
        (["--hard-ban"], "give it with --ban"),
        (["--requests", "creative"], "--requests is a chat option"),
    ],
)
def test_bad_ban_and_request_options_are_one_line_exit_2(extra, message, tmp_path, capsys):
    assert main(["tilt", "--toward", "phrase:vibrant", "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()
