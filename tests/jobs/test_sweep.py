import csv
import json

import pytest
import torch
from transformers import AutoTokenizer

import tokentilt.jobs.sweep
import tokentilt.jobs.tilt
import tokentilt.training.rate
from tokentilt.cli import main, sweep_axes
from tokentilt.config import merge, read_yaml
from tokentilt.data import corpus
from tokentilt.jobs.sweep import BASELINE, CSV_COLUMNS, RunSpec, SweepConfig, SweepLog, curve_biases, grid
from tokentilt.measurement.evaluate import EvalConfig

TEXT = "The quick brown fox jumps over the lazy dog, and the box of wax is next to the axe. " * 30


@pytest.fixture
def small_text(tmp_path, monkeypatch):
    """A short eval file, and a short training stream instead of tokenizing the whole train split."""
    path = tmp_path / "eval.txt"
    path.write_text(TEXT)
    monkeypatch.setattr(tokentilt.data.corpus, "train_tokens", lambda tok: corpus.tokenize(tok, TEXT))
    return path


def sweep_argv(tiny_model_dir, text, out, *extra):
    return [
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--toward",
        "x",
        "--objective",
        "tilt-distill,kl-alpha-beta",
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
        "8",
        "--eval-text",
        str(text),
        "--eval-windows",
        "2",
        "--eval-seq-len",
        "16",
        "--curve-points",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def read_csv(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_grid_pairs_tilt_distill_with_every_rate_and_bias():
    cfg = SweepConfig(objectives=["tilt-distill", "kl-alpha-beta"], lrs=[1e-4, 1e-5], rates=[0.3], biases=[2.0])
    specs = grid(cfg)
    assert specs[:2] == [RunSpec(BASELINE, rate=0.3), RunSpec(BASELINE, bias=2.0)]
    assert len([s for s in specs if s.objective == "tilt-distill"]) == 4  # 2 lr x (1 rate + 1 bias)
    assert [s.lr for s in specs if s.objective == "kl-alpha-beta"] == [1e-4, 1e-5]
    assert len({s.key for s in specs}) == len(specs)
    assert curve_biases([4.0], 3) == [2.0, 4.0, 6.0]
    assert curve_biases([], 0) == []


T_975_DF15 = 2.131449545559323  # Student-t 0.975 quantile, 15 degrees of freedom (16 samples)


def hand_rate(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of R recounted from 16 samples' ids (16, L), without tokentilt.measurement.metrics."""
    rates = mask[tokens].double().mean(1)  # (N,)
    assert len(rates) == 16
    mean = float(rates.mean())
    half = T_975_DF15 * float(rates.std(unbiased=True)) / 4
    return mean, max(mean - half, 0.0), min(mean + half, 1.0)


@pytest.mark.slow
def test_sweep_writes_outputs_and_skips_finished_runs(tiny_model_dir, small_text, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    recounts = []  # R of every measure() of the sweep, recounted from its samples
    real_measure = tokentilt.jobs.sweep.measure
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    mask = torch.tensor(["x" in t.lower() for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])])

    def recording_measure(*args, **kwargs):
        result, samples = real_measure(*args, **kwargs)
        recounts.append(hand_rate(samples.tokens, mask))
        return result, samples

    monkeypatch.setattr(tokentilt.jobs.sweep, "measure", recording_measure)
    assert main(sweep_argv(tiny_model_dir, small_text, out)) == 0
    monkeypatch.setattr(tokentilt.jobs.sweep, "measure", real_measure)
    columns, rows = read_csv(out / "sweep.csv")
    assert columns[:10] == [
        "objective",
        "lr",
        "bias",
        "rate_mean",
        "rate_ci_low",
        "rate_ci_high",
        "ppl",
        "drift",
        "distinct_2",
        "seconds",
    ]
    assert columns == CSV_COLUMNS
    objectives = [r["objective"] for r in rows]
    assert objectives.count(BASELINE) == 2  # b = 3 and one curve point (b = 4.5)
    assert objectives.count("tilt-distill") == 1 and objectives.count("kl-alpha-beta") == 1
    distill = next(r for r in rows if r["objective"] == "tilt-distill")
    baseline = [r for r in rows if r["objective"] == BASELINE]
    assert sorted(float(r["bias"]) for r in baseline) == [3.0, 4.5]
    assert float(distill["bias"]) == 3.0 and float(distill["drift"]) > 0 and distill["steps"] == "2"
    # every row's R and interval is the recount of one measurement's samples (16 prompts x 1 sample x 8 tokens)
    assert len(recounts) == len(rows) == 4
    reported = sorted((float(r["rate_mean"]), float(r["rate_ci_low"]), float(r["rate_ci_high"])) for r in rows)
    for got, want in zip(reported, sorted(recounts)):
        assert got == pytest.approx(want, abs=1e-6)
        assert abs(got[0] * 128 - round(got[0] * 128)) < 1e-4  # k set tokens of 128
        assert got[2] - got[1] > 0.01 or got[0] in (0.0, 1.0)  # an interval with width, unless R is 0 or 1
    assert (out / "pareto.png").stat().st_size > 1000
    assert "| objective |" in (out / "sweep.md").read_text()

    # A rerun finds every run finished: it must not even load the model.
    def no_load(*a, **k):
        raise AssertionError("finished sweep reloaded the model")

    monkeypatch.setattr(tokentilt.jobs.sweep, "load_with_set", no_load)
    lines = (out / "runs.jsonl").read_text()
    assert main(sweep_argv(tiny_model_dir, small_text, out)) == 0
    assert (out / "runs.jsonl").read_text() == lines
    assert read_csv(out / "sweep.csv")[1] == rows

    # Another lr adds only the two runs at that lr.
    monkeypatch.undo()
    monkeypatch.setattr(tokentilt.data.corpus, "train_tokens", lambda tok: corpus.tokenize(tok, TEXT))
    argv = sweep_argv(tiny_model_dir, small_text, out)
    argv[argv.index("1e-3")] = "1e-3,2e-3"
    assert main(argv) == 0
    new = (out / "runs.jsonl").read_text()[len(lines) :].splitlines()
    assert len(new) == 2 and all('"lr": 0.002' in line for line in new)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--objective", "bogus"], "objective must be one of"),
        (["--rate", "0.5,1.2"], "rate must be in (0, 1)"),
        (["--bias", "inf"], "bias values must be finite"),
        (["--lr", "fast"], "bad value for lr"),
        (["--eval-text", "/nonexistent/eval.txt"], "text file not found"),
        (["--rate-rounds", "0"], "rate-rounds must be a positive integer"),
    ],
)
def test_sweep_bad_input_is_one_line_exit_2(tiny_model_dir, small_text, tmp_path, capsys, extra, message):
    code = main(sweep_argv(tiny_model_dir, small_text, tmp_path / "s", *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # nothing written, so a corrected rerun is not refused


def test_sweep_refuses_a_folder_with_other_settings(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "runs.jsonl").write_text('{"kind": "settings", "settings": {"steps": 1}}\n')
    with pytest.raises(ValueError, match="other settings"):
        tokentilt.jobs.sweep.run_sweep(
            SweepConfig(out=str(out), eval=tokentilt.jobs.sweep.EvalConfig(eval_text=__file__))
        )


@pytest.mark.slow
def test_sweep_at_a_rate_trains_tilt_distill_toward_the_corrected_bias(tiny_model_dir, small_text, tmp_path):
    out = tmp_path / "sweep"
    argv = sweep_argv(
        tiny_model_dir,
        small_text,
        out,
        "--objective",
        "tilt-distill",
        "--rate",
        "0.5",
        "--bias",
        "",
        "--rate-rounds",
        "2",
        "--curve-points",
        "0",
        "--samples-per-prompt",
        "2",
        "--half-width",
        "0",
    )
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    calibrated = next(r["bias"] for r in records if r.get("kind") == "calibration")
    baseline = next(r for r in records if r.get("objective") == BASELINE)
    distill = next(r for r in records if r.get("objective") == "tilt-distill")
    assert baseline["bias"] == calibrated == distill["calibrated_bias"]
    trained = [r["bias"] for r in distill["bias_rounds"]]
    assert trained[0] == calibrated and len(trained) == 2
    assert distill["bias"] in trained and distill["rate_target"] == 0.5
    row = next(r for r in read_csv(out / "sweep.csv")[1] if r["objective"] == "tilt-distill")
    assert float(row["bias"]) == distill["bias"] and float(row["rate_target"]) == 0.5


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sweep_log_writes_nothing_before_its_first_record(tmp_path):
    folder = tmp_path / "s"
    log = SweepLog(folder, {"steps": 1}, overwrite=False)
    assert not folder.exists() and log.runs() == {}
    log.append({"kind": "run", "key": "a"})
    assert read_jsonl(folder / "runs.jsonl") == [
        {"kind": "settings", "settings": {"steps": 1}},
        {"kind": "run", "key": "a"},
    ]


def test_sweep_log_drops_a_cut_off_last_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"kind": "settings", "settings": {"steps": 1}}\n{"kind": "run", "key": "a"}\n{"kind": "ru')
    log = SweepLog(tmp_path, {"steps": 1}, overwrite=False)
    assert list(log.runs()) == ["a"]
    log.append({"kind": "run", "key": "b"})
    assert [r.get("key") for r in read_jsonl(path)] == [None, "a", "b"]  # every line parses again
    path.write_text('{"kind": "settings", "settings": {"steps": 1}}\n{"kind": "ru\n{"kind": "run", "key": "a"}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        SweepLog(tmp_path, {"steps": 1}, overwrite=False)


def test_sweep_log_overwrite_replaces_the_old_file_at_the_first_record(tmp_path):
    path = tmp_path / "runs.jsonl"
    old = '{"kind": "settings", "settings": {"steps": 9}}\n{"kind": "run", "key": "old"}\n'
    path.write_text(old)
    log = SweepLog(tmp_path, {"steps": 1}, overwrite=True)  # other settings: no error with overwrite
    assert log.runs() == {} and path.read_text() == old
    log.append({"kind": "run", "key": "new"})
    assert read_jsonl(path) == [{"kind": "settings", "settings": {"steps": 1}}, {"kind": "run", "key": "new"}]


@pytest.mark.parametrize(
    "text",
    [
        "objective: tilt-distill,kl-alpha-beta\nlr: [1e-4, 3e-4]\nrate: 0.5\nbias: ''\n",
        "objectives: [tilt-distill, kl-alpha-beta]\nlrs: 1e-4, 3e-4\nrates: [0.5]\nbiases: []\n",
    ],
)
def test_sweep_yaml_takes_the_axes_by_flag_or_field_name(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    cfg = merge(SweepConfig, sweep_axes(read_yaml(str(path))), sweep_axes({"rate": "0.3,0.5"}))
    cfg.check()
    cfg = cfg.resolved()
    assert cfg.objectives == ["tilt-distill", "kl-alpha-beta"] and cfg.lrs == [1e-4, 3e-4]
    assert cfg.rates == [0.3, 0.5] and cfg.biases == []  # the flag overrides the file


@pytest.mark.slow
def test_each_sweep_run_starts_from_the_original_weights(tiny_model_dir, small_text, tmp_path):
    def kl_rows(out, lrs):
        argv = sweep_argv(
            tiny_model_dir, small_text, out, "--objective", "kl-alpha-beta", "--lr", lrs, "--curve-points", "0"
        )
        assert main(argv) == 0
        return {r["lr"]: r for r in read_csv(out / "sweep.csv")[1] if r["objective"] == "kl-alpha-beta"}

    both, alone = kl_rows(tmp_path / "both", "1e-2,2e-3"), kl_rows(tmp_path / "alone", "2e-3")
    assert both["0.002"]["ppl"] == alone["0.002"]["ppl"] and both["0.002"]["drift"] == alone["0.002"]["drift"]
    assert both["0.01"]["ppl"] != both["0.002"]["ppl"]


@pytest.mark.slow
def test_sweep_calibrates_b_on_the_probe_seeds_not_the_eval_seeds(tiny_model_dir, small_text, tmp_path, monkeypatch):
    seeds = []
    real_calibrate = tokentilt.jobs.sweep.calibrate

    def recording_calibrate(model, tokenizer, mask, rate, cfg, *args, **kwargs):
        seeds.append(cfg.eval_seed)
        return real_calibrate(model, tokenizer, mask, rate, cfg, *args, **kwargs)

    monkeypatch.setattr(tokentilt.jobs.sweep, "calibrate", recording_calibrate)
    argv = sweep_argv(
        tiny_model_dir,
        small_text,
        tmp_path / "sweep",
        "--objective",
        "kl-alpha-beta",
        "--rate",
        "0.5",
        "--bias",
        "",
        "--curve-points",
        "0",
        "--eval-seed",
        "77",
    )
    assert main(argv) == 0
    assert seeds == [EvalConfig(eval_seed=77).probe().eval_seed] and seeds != [77]
