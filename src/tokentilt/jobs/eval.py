"""The `tokentilt eval` job: a model's R and costs against a reference, beside the decode-time baseline."""

from __future__ import annotations

import json
from pathlib import Path

from tokentilt.data.chat import check_template
from tokentilt.jobs.eval_config import EvalJobConfig
from tokentilt.measurement.calibrate import calibrate, check_rate
from tokentilt.measurement.evaluate import EvalConfig, excess_cost, held_out, held_out_text, measure, public
from tokentilt.models.load import load_model
from tokentilt.runs.report import with_interval
from tokentilt.targets.phrases import resolve_target


def run(cfg: EvalJobConfig, *, echo=print, progress: bool = False) -> dict:
    """`tokentilt eval`: measure (see measure_models), print the table, and write it as JSON to cfg.out if
    given. Progress goes through echo, line by line (there is no bar)."""
    result = measure_models(cfg, echo)
    echo(eval_table(result))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
        echo(f"wrote {cfg.out}")
    return result


def evaluate_model(
    model_name: str,
    reference_name: str,
    toward: str,
    cfg: EvalConfig,
    bias: float = 0.0,
    rate: float = 0.0,
    bf16: bool = False,
    echo=print,
) -> dict:
    """The API's measurement of `tokentilt eval` (measure_models), from loose arguments."""
    job = EvalJobConfig(
        model=model_name, reference=reference_name, toward=toward, bias=bias, rate=rate, bf16=bf16, eval=cfg
    )
    return measure_models(job, echo)


def measure_models(job: EvalJobConfig, echo=print) -> dict:
    """A model's R and costs against a reference, optionally beside the decode-time baseline (the reference
    sampled with bias b, or with the b calibrated to `rate`).

    Returns {"model", "reference", "selector", "rows": [{"name", "bias", "rate", "ppl", ...}]}.
    """
    job.eval.check()
    job = job.resolved()  # chat's default prompts
    model_name, reference_name, toward, cfg = job.model, job.reference, job.toward, job.eval
    bias, rate, bf16 = job.bias, job.rate, job.bf16
    if rate:
        check_rate(rate)
        if bias:
            raise ValueError("give --bias or --rate, not both")
    text = held_out_text(cfg)  # a missing file fails before the slow load
    echo(f"loading model {model_name!r} ...")
    model, tokenizer = load_model(model_name)
    if cfg.chat:
        check_template(tokenizer)  # before the reference is loaded
    reference = model
    if reference_name != model_name:
        echo(f"loading reference {reference_name!r} ...")
        reference, _ = load_model(reference_name)
    vocab = model.get_output_embeddings().weight.shape[0]
    if reference.get_output_embeddings().weight.shape[0] != vocab:
        raise ValueError(
            f"model and reference have different vocabularies ({vocab} vs "
            f"{reference.get_output_embeddings().weight.shape[0]} tokens)"
        )
    tokens = resolve_target(toward, tokenizer, model, echo)
    windows, text_windows = held_out(reference, tokenizer, cfg, text, bf16, echo)
    rows = []
    result, _ = measure(
        model,
        tokenizer,
        tokens,
        cfg,
        windows,
        reference=None if reference is model else reference,
        bf16=bf16,
        text_windows=text_windows,
        per_window=True,  # each row's per-window costs, from the same pass: rho's interval
    )
    rows.append({"name": model_name, "bias": 0.0, **result})
    if rate:
        echo(f"calibrating the decode-time bias to R = {rate} on the reference ...")
        bias = calibrate(reference, tokenizer, tokens, rate, cfg, windows, bf16=bf16, echo=echo).bias
    if bias:
        result, _ = measure(
            reference, tokenizer, tokens, cfg, windows, bias=bias, bf16=bf16, text_windows=text_windows, per_window=True
        )
        rows.append({"name": f"decode-bias b={bias:.3f} on {reference_name}", "bias": bias, **result})
    out = {
        "model": model_name,
        "reference": reference_name,
        "selector": toward,
        "target_size": tokens.size,
        "chat": cfg.chat,
        "eval_text": "chat:held-out replies" if cfg.chat else cfg.eval_text or "plays:test",
        "eval_tokens": int(windows.numel()),
        "rate_target": rate or None,
        "rows": rows,
    }
    if bias and reference is not model:  # rho of the model against the decode-time tilt at this b
        base, _ = measure(
            reference, tokenizer, tokens, cfg, windows, bf16=bf16, text_windows=text_windows, per_window=True
        )
        rows.insert(1, {"name": f"{reference_name} (reference)", "bias": 0.0, **base})
        # the decode-time tilt is at a fixed b here, not at the model's R: the windows alone are resampled
        out.update(excess_cost(base, rows[0], rows[-1]))
    out["rows"] = [public(r) for r in rows]
    return out


def eval_table(result: dict) -> str:
    """Plain-text table of evaluate_model's rows."""
    head = f"{'':<44} {'R [95% CI]':>22} {'ppl':>9} {'drift':>8} {'dist-1':>7} {'dist-2':>7} {'rep':>6}"
    lines = [head]
    for r in result["rows"]:
        rate = f"{r['rate']['mean']:.3f} [{r['rate']['ci_low']:.3f}, {r['rate']['ci_high']:.3f}]"
        lines.append(
            f"{r['name'][:44]:<44} {rate:>22} {r['ppl']:>9.2f} {r['drift']:>8.4f} {r['distinct_1']:>7.3f} "
            f"{r['distinct_2']:>7.3f} {r['repetition']:>6.3f}"
        )
    if result.get("chat"):
        lines.append(
            "(chat: R and the costs on the assistant's replies; raw-text ppl: "
            + ", ".join(f"{r['ppl_text']:.2f}" for r in result["rows"])
            + ")"
        )
    if "rho" in result:  # rho, drift_ratio (and a chat run's *_text), each with its 95% interval
        names = [k for k in result if k.startswith(("rho", "drift_ratio")) and not k.endswith(("_ci_low", "_ci_high"))]
        lines.append(
            "rho = "
            + ", ".join(f"{k} {with_interval(result, k)}" if result[k] is not None else f"{k} n/a" for k in names)
            + (" (95% intervals: a paired bootstrap over the held-out windows)" if "rho_ci_low" in result else "")
        )
    return "\n".join(lines)
