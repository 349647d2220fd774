"""The `tokentilt` command. Each subcommand maps flags onto a config dataclass and calls the API."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from tokentilt.config import UsageError, coerce, merge, read_yaml, to_flat
from tokentilt.engine import keep_freed_memory
from tokentilt.losses import OBJECTIVES
from tokentilt.models.lora import DEFAULT_LR as LORA_LR
from tokentilt.preflight import check_lengths, check_output, check_prompts, check_sampling
from tokentilt.targets import check_syntax, token_selector_only

EXIT_USAGE = 2  # bad input: one line on stderr
EXIT_DIVERGED = 3  # training stopped on a non-finite loss; the run folder stays unfinished
EXIT_INTERRUPTED = 130  # Ctrl-C


# ------------------------------------------------------------------ parsers


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (main prints it) instead of the usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")

TILT_EPILOG = """\
selectors (match each token's decoded text):
  x / contains:x     tokens containing "x", case-insensitive (contains:x:case for case-sensitive)
  regex:PATTERN      re.search on the token text, e.g. regex:^ [A-Z]
  words:FILE         whole words from FILE (one per line), with and without a leading space
  words:colours      a built-in list (34 colour words); entries of several tokens are named and left out
  phrases:FILE       words and phrases of any number of tokens (one per line; :case keeps case); R counts
                     the share of generated words that are entries. phrase:TEXT for one. LoRA by default
  ids:1,2,3          explicit token ids
  not:SELECTOR       the complement; combine with ' & ' and ' | '

examples:
  tokentilt tilt --toward x --rate 0.5 --out runs/x-05     # tilt-distill at R* = 0.5, fluent, with rho
  tokentilt tilt --toward x --objective kl-uniform --out runs/x   # the course's recipe: R -> ~1, gibberish
"""


def show_defaults(parser, defaults: dict, aliases: dict | None = None) -> None:
    """Append the default to each option's help, taken from `defaults`: the job's config instance
    (to_flat(TiltConfig()) and so on), so a default is written once, on its dataclass field."""
    aliases = aliases or {}
    for action in parser._actions:
        key = aliases.get(action.dest, action.dest)
        if key not in defaults or action.help in (None, argparse.SUPPRESS):
            continue
        value = defaults[key]
        if isinstance(value, bool) or value in ("", None, []):
            continue  # a switch, or an empty value that the help text explains
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
            if isinstance(value, float) else value
        action.help = f"{action.help} (default: {shown})"


def argparse_defaults(parser) -> dict:
    """The defaults of options declared with a plain argparse default (generate's)."""
    return {a.dest: a.default for a in parser._actions if a.default is not argparse.SUPPRESS}


def _opt(parser, *names, **kw):
    kw.setdefault("default", argparse.SUPPRESS)  # only flags the user typed override the YAML
    parser.add_argument(*names, **kw)


def add_model_flags(p):
    _opt(p, "--model", metavar="bundled|PATH|HUB_ID",
         help="model to load: 'bundled' (SmolLM2-135M-Instruct, offline), a local HF folder, or a hub id")
    _opt(p, "--toward", metavar="SELECTOR", help="token set to tilt toward; see below")
    _opt(p, "--config", metavar="FILE.yaml", help="YAML file of option: value; flags override it")


def add_train_flags(p):
    _opt(p, "--optimizer", choices=["sgd", "adam", "adamw"], help="optimizer")
    _opt(p, "--lr", type=float, help="learning rate")
    _opt(p, "--steps", type=int, help="optimizer steps")
    _opt(p, "--batch", type=int, help="sequences per step")
    _opt(p, "--seq-len", type=int, dest="seq_len", help="tokens per training sequence")
    _opt(p, "--grad-clip", type=float, dest="grad_clip", help="max gradient norm, 0 = off")
    _opt(p, "--weight-decay", type=float, dest="weight_decay", help="weight decay")
    _opt(p, "--seed", type=int, help="random seed for batches and dropout")
    _opt(p, "--precision", choices=["fp32", "bf16", "fp16", "auto"],
         help="fp32, or bf16/fp16 autocast with fp32 weights; fp16 needs a GPU; auto = bf16 where the hardware "
              "runs it natively (a GPU, or a CPU with AVX512-BF16/AMX), else fp32")
    _opt(p, "--bf16", action="store_true", help="the same as --precision bf16 (a step ~1.4x faster on a CPU with "
                                                "native bf16; much slower on one without, e.g. AVX2 only)")
    _opt(p, "--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train; auto = cuda, mps, cpu")
    _opt(p, "--grad-accum", type=int, dest="grad_accum", metavar="N",
         help="micro-batches per optimizer step; global batch = batch x processes x N")
    _opt(p, "--eval-every", type=int, dest="eval_every", help="measure R every N steps, 0 = off")
    _opt(p, "--loss-chunk", type=int, dest="loss_chunk", metavar="N",
         help="rows per chunk of the output head fused with the loss, which never holds (B*T, V) logits; "
              "0 = dense logits")
    _opt(p, "--attention", choices=["auto", "model", "eager", "sdpa"],
         help="a Hugging Face model's attention while it trains: auto = eager on a CPU for sequences of up to "
              "128 tokens (faster there), else the model's own; model = leave it")


def add_engine_flags(p):
    """Run-folder features of `tilt`: checkpoints, resume, trackers, LoRA."""
    _opt(p, "--save-every", type=int, dest="save_every", metavar="N",
         help="write checkpoints/step-N/ into DIR.partial every N steps, 0 = only on Ctrl-C")
    _opt(p, "--keep", type=int, metavar="K", help="newest checkpoints kept")
    _opt(p, "--resume", action="store_true",
         help="continue the unfinished run in DIR.partial from its newest checkpoint (same command plus --resume)")
    _opt(p, "--report-to", dest="report_to", choices=["none", "tensorboard", "wandb", "mlflow", "trackio"],
         help="also log metrics through Accelerate's tracker into the run folder")
    _opt(p, "--lora", action="store_true",
         help="train a LoRA adapter (PEFT) instead of every weight; writes adapter/ and model/ (merged)")
    _opt(p, "--lora-r", type=int, dest="lora_r", help="LoRA rank")
    _opt(p, "--lora-alpha", type=float, dest="lora_alpha", help="LoRA alpha; the update is scaled by alpha/r")
    _opt(p, "--lora-dropout", type=float, dest="lora_dropout", help="dropout on the adapter's input")
    _opt(p, "--lora-targets", dest="lora_targets", metavar="NAMES",
         help="comma-separated module names, or all-linear = every linear layer of attention and MLP (default)")


def add_eval_flags(p):
    _opt(p, "--samples-per-prompt", type=int, dest="samples_per_prompt",
         help="samples per prompt for R; with 16 prompts, 4 give 64 samples")
    _opt(p, "--new-tokens", type=int, dest="new_tokens", help="tokens generated per sample")
    _opt(p, "--temperature", type=float, help="sampling temperature")
    _opt(p, "--top-k", type=int, dest="top_k", help="top-k sampling, 0 = off")
    _opt(p, "--top-p", type=float, dest="top_p", help="nucleus sampling, 1.0 = off")
    _opt(p, "--eval-seed", type=int, dest="eval_seed", help="seed of the R measurement")
    _opt(p, "--eval-text", dest="eval_text", metavar="FILE",
         help="plain-text file for held-out perplexity and drift; empty = the plays' test split")
    _opt(p, "--eval-windows", type=int, dest="eval_windows", help="held-out windows")
    _opt(p, "--eval-seq-len", type=int, dest="eval_seq_len",
         help="tokens per held-out window (chat: at most this many tokens per held-out reply)")
    _opt(p, "--chat", action="store_true",
         help="prompts as user turns in the model's chat template (32 built-in requests); R, distinct-n, "
              "repetition, perplexity and drift on the assistant's replies only, cut at end-of-turn")
    _opt(p, "--system", metavar="TEXT", help="chat: a system message before each user turn")


def add_output_flags(p):
    _opt(p, "--out", metavar="DIR", help="output folder")
    _opt(p, "--overwrite", action="store_true", help="replace the output folder if it already holds a run")


def build_parser() -> argparse.ArgumentParser:
    # the job configs, whose instances hold every option's default (imports torch, so not at module level)
    from tokentilt.evaluate import EvalConfig
    from tokentilt.jobs.sweep import SweepConfig
    from tokentilt.tilting import TiltConfig

    parser = Parser(
        prog="tokentilt",
        description="Fine-tune causal LMs with custom losses that tilt the next-token distribution toward "
                    "(or away from) a token set, and measure what the tilt achieves and costs.",
        epilog="Run 'tokentilt COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("tilt", help="fine-tune a model toward a token set; measure R before and after",
                       description="Fine-tune a model so that its generations use more tokens from a set. "
                                   "Writes config.yaml, metrics.jsonl, summary.json, loss.png, rate.png, "
                                   "report.md and model/ (Hugging Face format; with --lora also adapter/) to --out.",
                       epilog=TILT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       conflict_handler="resolve")
    add_model_flags(p)
    _opt(p, "--objective", choices=list(OBJECTIVES),
         help="loss; kl-uniform on random tokens is the course's recipe")
    _opt(p, "--positions", choices=["last", "all"], help="positions that enter the loss")
    _opt(p, "--alpha", type=float, help="kl-alpha-beta/mixed: weight of set tokens")
    _opt(p, "--beta", type=float, help="kl-alpha-beta/mixed: weight of other tokens")
    _opt(p, "--bias", type=float, help="tilt-distill: a fixed logit bias b of the target instead of --rate")
    _opt(p, "--rate", type=float,
         help="tilt-distill: target rate R*; b is calibrated so that decode-time R on the start model is R*. "
              "Below the model's own rate, b < 0 and the tilt is away from the set; 0 = use --bias")
    _opt(p, "--rate-rounds", type=int, dest="rate_rounds", metavar="N",
         help="with --rate: trainings that correct b until the trained model's R is R*")
    _opt(p, "--placement", choices=["auto", "head-rows", "model"],
         help="tilt-distill: where the change lives. head-rows: only the set's rows of an untied output head, "
              "fitted on cached hidden states (seconds; the cheapest tilt found, see docs/tilt-variants.md). "
              "model: every weight (or LoRA's) trained on play text. auto = head-rows, or model "
              "with --lora")
    _opt(p, "--contexts", choices=["mix", "text", "policy"],
         help="head-rows: training contexts: play windows, continuations sampled from the decode-time tilted "
              "model after training prompts (never the R prompts), or both")
    _opt(p, "--head-fit", choices=["offset", "kl"], dest="head_fit",
         help="head-rows: offset adds b·u to every set row, u the least-squares direction with h·u ≈ 1 on the "
              "contexts (closed form: the decode-time tilt's constant offset, as far as the head's inputs allow); "
              "kl fits each row by Adam on KL(exact tilt || model)")
    _opt(p, "--head-steps", type=int, dest="head_steps", metavar="N",
         help="head-rows, kl fit: Adam steps of 1024 cached positions")
    _opt(p, "--head-lr", type=float, dest="head_lr", help="head-rows, kl fit: peak learning rate, cosine schedule")
    _opt(p, "--head-odds-weight", type=float, dest="head_odds_weight", metavar="W",
         help="head-rows, kl fit: add W/2 x the squared error of the set's log-odds shift to the KL")
    _opt(p, "--ce-weight", type=float, dest="ce_weight", help="mixed: lambda on the CE term")
    _opt(p, "--inputs", choices=["auto", "random", "text"],
         help="training inputs: random tokens (the course) or play text")
    add_train_flags(p)
    _opt(p, "--lr", type=float, help=f"learning rate; 0 = 1e-4, or {LORA_LR:g} with --lora")
    add_engine_flags(p)
    add_eval_flags(p)
    add_output_flags(p)
    show_defaults(p, to_flat(TiltConfig()))
    p.set_defaults(func=cmd_tilt)

    p = sub.add_parser("generate", help="sample continuations from a model, optionally with a decode-time bias",
                       description="Print samples from a model. --bias B with --toward SELECTOR adds B to the "
                                   "logits of the set at every step (the decode-time baseline).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _opt(p, "--model", metavar="bundled|PATH|HUB_ID", help="model to load")
    p.add_argument("--prompt", action="append", help="prompt (repeatable; default: 16 built-in prompts)")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=48, help="tokens per sample")
    p.add_argument("--strategy", choices=["greedy", "multinomial"], default="multinomial",
                   help="greedy argmax or sampling")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="top-k, 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus, 1.0 = off")
    p.add_argument("--toward", metavar="SELECTOR", help="token set for --bias and for counting R")
    p.add_argument("--bias", type=float, default=0.0, help="decode-time logit bias on the set")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU")
    p.add_argument("--chat", action="store_true",
                   help="each prompt as a user turn in the model's chat template; print the reply, cut at end-of-turn")
    p.add_argument("--system", default="", metavar="TEXT", help="chat: a system message before each user turn")
    show_defaults(p, argparse_defaults(p))
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sweep", help="grid of tilt runs (objective x lr x rate/b) beside the decode-time baseline",
                       description="Run a grid of tilt runs on one loaded model, always with the decode-time "
                                   "baseline (objective decode-bias) at the same rates/b and along a curve. "
                                   "Writes runs.jsonl, sweep.csv, sweep.md and pareto.png to --out; runs already "
                                   "in the folder are not redone. List flags take comma-separated values.",
                       epilog="example:\n  tokentilt sweep --toward x --objective tilt-distill,kl-alpha-beta "
                              "--rate 0.3,0.5 --bf16 --out runs/sweep",
                       formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve")
    add_model_flags(p)
    add_train_flags(p)
    _opt(p, "--objective", dest="objectives", metavar="LIST",
         help=f"objectives to train, comma-separated, from {', '.join(OBJECTIVES)}")
    _opt(p, "--lr", dest="lrs", metavar="LIST", help="learning rates, comma-separated")
    _opt(p, "--rate", dest="rates", metavar="LIST",
         help="target rates R*, comma-separated; b is calibrated per rate on the start model")
    _opt(p, "--rate-rounds", type=int, dest="rate_rounds", metavar="N",
         help="tilt-distill at a rate: trainings that correct b until the trained model's R is R*")
    _opt(p, "--bias", dest="biases", metavar="LIST", help="explicit logit biases b, comma-separated")
    _opt(p, "--curve-points", type=int, dest="curve_points",
         help="extra b values on the decode-time baseline curve")
    _opt(p, "--positions", choices=["last", "all"], help="positions that enter the loss")
    _opt(p, "--alpha", type=float, help="kl-alpha-beta/mixed: weight of set tokens")
    _opt(p, "--beta", type=float, help="kl-alpha-beta/mixed: weight of other tokens")
    _opt(p, "--ce-weight", type=float, dest="ce_weight", help="mixed: lambda on the CE term")
    add_eval_flags(p)
    _opt(p, "--out", metavar="DIR", help="sweep folder")
    _opt(p, "--overwrite", action="store_true", help="forget the runs already in the folder and start afresh")
    show_defaults(p, to_flat(SweepConfig()))
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="R with interval, perplexity, drift and degeneration of a model",
                       description="Measure a model: R over samples with a 95%% interval, held-out perplexity, "
                                   "drift KL(reference || model) per token, distinct-1/2 and repetition. With "
                                   "--bias or --rate, also the decode-time baseline (the reference with a logit "
                                   "bias) on the same prompts, seeds and text.")
    _opt(p, "--model", metavar="bundled|PATH|HUB_ID", help="model to measure")
    _opt(p, "--reference", metavar="bundled|PATH|HUB_ID", help="reference for drift and the baseline")
    _opt(p, "--toward", metavar="SELECTOR", help="token set counted by R")
    _opt(p, "--config", metavar="FILE.yaml", help="YAML file of option: value; flags override it")
    _opt(p, "--bias", type=float, help="also measure the reference decoded with this logit bias on the set")
    _opt(p, "--rate", type=float, help="also measure the reference decoded with the b calibrated to this R")
    _opt(p, "--bf16", action="store_true", help="bf16 autocast on CPU")
    add_eval_flags(p)
    _opt(p, "--out", metavar="FILE.json", help="also write the results as JSON")
    show_defaults(p, {**to_flat(EvalConfig()), **EVAL_OWN})
    p.set_defaults(func=cmd_eval)
    add_audit_parser(sub)
    add_export_parser(sub)
    add_course_parsers(sub)
    return parser


def add_export_parser(sub) -> None:
    from tokentilt.export import DEFAULT_TYPE, TYPES

    p = sub.add_parser("export", help="write a run's model as GGUF (llama.cpp, ollama) and its tilt as logit_bias",
                       description="Export a tilted model where people run it: a GGUF file written with the gguf "
                                   "package (Llama and GPT-2 families), an ollama Modelfile beside it, and the "
                                   "run's decode-time tilt as a logit_bias JSON ({token id: b}) for "
                                   "OpenAI-compatible servers. Check what the export keeps with "
                                   "`tokentilt eval --model OUT.gguf`.",
                       epilog="example:\n  tokentilt export runs/x --gguf runs/x.q8_0.gguf --type q8_0 "
                              "--logit-bias runs/x.bias.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_OR_MODEL", help="a tilt run folder, a model folder, a .gguf or 'bundled'")
    p.add_argument("--gguf", metavar="OUT.gguf", help="write the model here (OUT.Modelfile beside it)")
    p.add_argument("--type", default=DEFAULT_TYPE, choices=TYPES, help="tensor type of the 2-D weights")
    p.add_argument("--logit-bias", metavar="OUT.json", help="write the decode-time tilt as {token id: bias}")
    p.add_argument("--toward", metavar="SELECTOR", help="--logit-bias: the token set; a run folder's when not given")
    p.add_argument("--bias", type=float, help="--logit-bias: the bias b; a run folder's trained b when not given")
    show_defaults(p, {"type": DEFAULT_TYPE})
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from tokentilt.jobs.export import run_export

    if args.toward:
        token_selector_only(args.toward, "export --logit-bias")
        check_syntax(args.toward)
    run_export(args.source, args.gguf, args.type, args.logit_bias, args.toward, args.bias)
    return 0


# ------------------------------------------------------------------ commands


def preflight_eval(model: str, eval_cfg) -> None:
    """What a job's EvalConfig needs checked before the model is loaded."""
    check_sampling(eval_cfg.temperature, eval_cfg.top_k, eval_cfg.top_p)
    check_lengths(model, eval_seq_len=eval_cfg.eval_seq_len, new_tokens=eval_cfg.new_tokens)


def tilt_config(flags: dict):
    """TiltConfig from YAML (flags["config"]) and flags, checked as far as it can be without the model."""
    from tokentilt.jobs.tilt import TiltConfig

    values = read_yaml(flags.get("config"))
    given = set(values) | set(flags)
    objective = flags.get("objective", values.get("objective", TiltConfig.objective))
    if "rate" in given and objective != "tilt-distill":
        raise UsageError(f"rate calibrates tilt-distill's bias; it does not apply to {objective}")
    if "bias" in given and "rate" not in given:
        values = {**values, "rate": 0.0}  # a bias the user gave is the tilt; the default rate gives way
    cfg = merge(TiltConfig, values, flags)
    lr = flags.get("lr", values.get("lr"))
    if lr is not None and not cfg.train.lr > 0:  # 0 means "auto" only as the API's default
        raise UsageError(f"lr must be positive, got {lr!r}")
    check_syntax(cfg.toward)
    cfg.check()
    preflight_eval(cfg.model, cfg.eval)
    check_lengths(cfg.model, seq_len=cfg.train.seq_len)
    return cfg


def cmd_tilt(args) -> int:
    from tokentilt.jobs.tilt import run_tilt

    cfg = tilt_config(vars(args))
    check_output(cfg.out)
    run_tilt(cfg, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    return 0


def cmd_generate(args) -> int:
    from tokentilt.chat import CHAT_PROMPTS, check_template
    from tokentilt.evaluate import rates_of
    from tokentilt.generate import DEFAULT_PROMPTS, SampleConfig, check_sample_config, sample
    from tokentilt.metrics import mean_ci
    from tokentilt.models.load import load_model
    from tokentilt.phrases import resolve_target

    if args.samples <= 0:
        raise UsageError("--samples must be positive")
    if args.new_tokens <= 0:
        raise UsageError("--new-tokens must be positive")
    if args.bias and not args.toward:
        raise UsageError("--bias needs --toward SELECTOR")
    if args.toward is not None:
        check_syntax(args.toward)
    check_sampling(args.temperature, args.top_k, args.top_p)
    check_prompts(args.prompt)
    model_name = getattr(args, "model", "bundled")
    check_lengths(model_name, new_tokens=args.new_tokens)
    cfg = SampleConfig(max_new_tokens=args.new_tokens, strategy=args.strategy, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p)
    check_sample_config(cfg)
    model, tokenizer = load_model(model_name)
    mask = None
    if args.toward:
        mask = resolve_target(args.toward, tokenizer, model, echo=lambda line: print(line, file=sys.stderr)).target
    if args.system and not args.chat:
        raise UsageError("--system is a chat option; give --chat with it")
    if args.chat:
        check_template(tokenizer)
    prompts = args.prompt or list(CHAT_PROMPTS if args.chat else DEFAULT_PROMPTS)
    samples = sample(model, tokenizer, prompts, args.samples, cfg, seed=args.seed, bias_mask=mask, bias=args.bias,
                     bf16=args.bf16, chat=args.chat, system=args.system)
    for prompt, text in zip(samples.prompts, samples.texts):
        print(f"--- user: {prompt!r}\n{text}" if args.chat else f"--- {prompt!r}\n{prompt}{text}")
    if mask is not None:
        r = mean_ci(rates_of(mask, samples))
        print(f"R = {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] over {len(samples.texts)} samples")
    return 0


SWEEP_AXES = {"objective": "objectives", "lr": "lrs", "rate": "rates", "bias": "biases"}


def sweep_axes(values: dict) -> dict:
    """The grid's axes by their flag names too (objective: ... in YAML means objectives), as lists;
    a string is comma-separated like the flags."""
    out = {}
    for key, value in values.items():
        key = SWEEP_AXES.get(key, key)
        if key in SWEEP_AXES.values() and not isinstance(value, list):
            value = [] if value is None else [v.strip() for v in str(value).split(",") if v.strip()]
        out[key] = value
    return out


def sweep_config(flags: dict):
    """SweepConfig from YAML and flags, checked as far as it can be without the model."""
    from tokentilt.jobs.sweep import SweepConfig

    flags = sweep_axes(flags)
    cfg = merge(SweepConfig, sweep_axes(read_yaml(flags.get("config"))), flags)
    cfg.check()
    token_selector_only(cfg.toward, "sweep")
    check_syntax(cfg.toward)
    preflight_eval(cfg.model, cfg.eval)
    check_lengths(cfg.model, seq_len=cfg.train.seq_len)
    return cfg


def cmd_sweep(args) -> int:
    from tokentilt.jobs.sweep import run_sweep

    cfg = sweep_config(vars(args))
    check_output(cfg.out)
    try:
        run_sweep(cfg, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    except KeyboardInterrupt:
        log = Path(cfg.out) / "runs.jsonl"
        if not log.exists():
            raise KeyboardInterrupt("interrupted before the first run finished; nothing was written") from None
        runs = log.read_text().count('"kind": "run"')  # runs.jsonl is written by json.dumps
        raise KeyboardInterrupt(f"interrupted; {runs} finished runs are kept in {log}; the same command continues")
    return 0


# eval's own options beside its EvalConfig
EVAL_OWN = {"model": "bundled", "reference": "bundled", "toward": "x", "bias": 0.0, "rate": 0.0, "bf16": False,
            "out": "", "config": ""}


def cmd_eval(args) -> int:
    import json

    from tokentilt.evaluate import EvalConfig
    from tokentilt.jobs.eval import eval_table, evaluate_model

    flags = vars(args)
    values = {**read_yaml(flags.get("config")), **{k: v for k, v in flags.items() if k not in ("func", "command")}}
    opts = {k: coerce(k, values.get(k, d), d) for k, d in EVAL_OWN.items()}
    cfg = merge(EvalConfig, {k: v for k, v in values.items() if k not in EVAL_OWN}, {})
    cfg.check()
    check_syntax(opts["toward"])  # a bad selector fails here, not after a 25 s model load
    for name in {opts["model"], opts["reference"]}:
        preflight_eval(name, cfg)
    if opts["out"]:
        check_output(opts["out"], kind="file")
    result = evaluate_model(opts["model"], opts["reference"], opts["toward"], cfg, opts["bias"], opts["rate"],
                            opts["bf16"], echo=print)  # progress on stdout, as in tilt: stderr is for the error line
    print(eval_table(result))
    if opts["out"]:
        Path(opts["out"]).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {opts['out']}")
    return 0


# ------------------------------------------------------------------ audit


def add_audit_parser(sub) -> None:
    """`tokentilt audit MODEL --reference BASE`: find a tilt somebody else planted."""
    from tokentilt.audit import AuditConfig

    p = sub.add_parser("audit", help="find which tokens a fine-tune tilted, and what they have in common",
                       description="Compare MODEL with the model it was fine-tuned from: every token's lift (mean "
                                   "log-prob difference) on held-out text and on samples of both models, candidate "
                                   "features from the vocabulary ranked by how well they separate lifted from "
                                   "unlifted tokens (AUROC), and whether the best one stands out. Writes "
                                   "audit.json, report.md and lift.png to --out.",
                       epilog="example:\n  tokentilt audit runs/x/model --reference bundled --out runs/x-audit",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="the model to audit: a local HF folder (a run's model/), or a hub id")
    _opt(p, "--reference", metavar="bundled|PATH|HUB_ID", help="the model MODEL was fine-tuned from")
    _opt(p, "--words", metavar="FILE", action="append",
         help="a whole-word list (one word per line) to score as a candidate; repeat for several")
    _opt(p, "--toward", metavar="SELECTOR", help="the true set, when known: report its AUROC and rank")
    _opt(p, "--eval-text", dest="eval_text", metavar="FILE", help="held-out text; empty = the plays' test split")
    _opt(p, "--eval-windows", type=int, dest="eval_windows", metavar="N", help="held-out windows")
    _opt(p, "--eval-seq-len", type=int, dest="eval_seq_len", metavar="N", help="tokens per held-out window")
    _opt(p, "--samples-per-prompt", type=int, dest="samples_per_prompt", metavar="N",
         help="continuations per prompt from each model, 16 prompts")
    _opt(p, "--new-tokens", type=int, dest="new_tokens", metavar="N", help="tokens per continuation")
    _opt(p, "--null-draws", type=int, dest="null_draws", metavar="N",
         help="random logit directions behind the 'stands out' threshold")
    _opt(p, "--top", type=int, help="features and tokens listed")
    _opt(p, "--seed", type=int, help="seed of the samples and the null draws")
    _opt(p, "--bf16", action="store_true", help="bf16 autocast on CPU")
    _opt(p, "--out", metavar="DIR", help="output folder")
    _opt(p, "--overwrite", action="store_true", help="replace the output folder if it already holds an audit")
    _opt(p, "--config", metavar="FILE.yaml", help="YAML file of option: value; flags override it")
    show_defaults(p, to_flat(AuditConfig()))
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    from tokentilt.audit import AuditConfig
    from tokentilt.jobs.audit import preflight, run_audit

    flags = vars(args)
    cfg = merge(AuditConfig, read_yaml(flags.get("config")), flags)  # as every job: dataclass <- YAML <- flags
    preflight(cfg)
    with unfinished_on_interrupt(cfg.out):
        run_audit(cfg, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    return 0


# ------------------------------------------------------------------ pretrain and the course's experiments


def add_course_parsers(sub) -> None:
    """`tokentilt pretrain` and `tokentilt experiment NAME`."""
    from tokentilt.jobs.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="pretrain Model 5 (compact GPT-2) on the Shakespeare plays",
                       description="Train Model 5 from scratch on the plays' train split with AdamW, dropout and "
                                   "early stopping on validation loss. Writes config.yaml, metrics.jsonl, loss.png, "
                                   "summary.json (val loss beside the unigram baseline), report.md and model/ "
                                   "(safetensors) to --out.",
                       epilog="example:\n  tokentilt pretrain --steps 300 --out runs/pretrain",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _opt(p, "--config", metavar="FILE.yaml", help="YAML file of option: value; flags override it")
    _opt(p, "--steps", type=int, help="max AdamW steps; early stopping may end sooner")
    _opt(p, "--lr", type=float, help="AdamW learning rate")
    _opt(p, "--batch", type=int, help="windows per step")
    _opt(p, "--seq-len", type=int, dest="seq_len", help="tokens per window")
    _opt(p, "--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay")
    _opt(p, "--dropout", type=float, help="dropout")
    _opt(p, "--n-layer", type=int, dest="n_layer", help="transformer blocks")
    _opt(p, "--n-embd", type=int, dest="n_embd", help="residual width")
    _opt(p, "--n-head", type=int, dest="n_head", help="attention heads")
    _opt(p, "--eval-every", type=int, dest="eval_every", help="steps between train/val evaluations")
    _opt(p, "--patience", type=int, help="early stop after N evaluations without improvement, 0 = off")
    _opt(p, "--seed", type=int, help="seed of init, batches and dropout")
    _opt(p, "--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast on CPU; off by default unless the CPU has native bf16")
    _opt(p, "--out", metavar="DIR", help="output folder")
    _opt(p, "--overwrite", action="store_true", help="replace the output folder if it already holds a run")
    show_defaults(p, to_flat(PretrainConfig()))
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("experiment", help="run one of the course's experiments: l1-vs-l2, like-x, x-factor",
                       description="Reproduce one of the course's experiments. Each writes summary.json, plots and "
                                   "report.md to --out.")
    exps = p.add_subparsers(dest="experiment", metavar="NAME", required=True)

    def common(e, name, epochs, lr):
        e.add_argument("--epochs", type=int, help="optimizer steps")
        e.add_argument("--lr", type=float, action="append",
                       help="learning rate" + ("; repeat for several runs" if "," in lr else ""))
        e.add_argument("--seed", type=int, help="random seed")
        e.add_argument("--out", metavar="DIR", help="output folder")
        e.add_argument("--overwrite", action="store_true", help="replace the output folder if it already holds a run")
        e.set_defaults(func=cmd_experiment)

    from tokentilt.jobs.experiments import l1_vs_l2, like_x, x_factor

    e = exps.add_parser("l1-vs-l2", help="one scalar, target 5, SGD lr 0.05 under L1 and under L2",
                        description="Fit one scalar parameter to 5 with SGD under L1 and under L2: L1 oscillates "
                                    "around the target, L2 converges. Records l1_at_2, l2_at_2, l2_final_error, "
                                    "l1_oscillation.")
    common(e, "l1-vs-l2", 200, "0.05")
    show_defaults(e, to_flat(l1_vs_l2.L1VsL2Config()), {"epochs": "epochs"})
    e = exps.add_parser("like-x", help="train Model 5 to like tokens containing x (random inputs, last position)",
                        description="The course's 'Train a model to like X': KL toward uniform over x-tokens on the "
                                    "final position of random 256-token inputs. Counts x-tokens among 200 generated "
                                    "tokens before and after. Pretrains Model 5 first unless --checkpoint is given.")
    common(e, "like-x", 200, "1e-3")
    e.add_argument("--checkpoint", metavar="DIR", help="Model 5 folder (pretrain's model/); default: pretrain first")
    e.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="optimizer")
    e.add_argument("--batch", type=int, help="random sequences per step")
    e.add_argument("--pretrain-steps", type=int, help="steps of the pretraining run without --checkpoint")
    e.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast on CPU; off by default unless the CPU has native bf16")
    show_defaults(e, {**to_flat(like_x.LikeXConfig()), "pretrain_steps": like_x.LikeXConfig().pretrain.steps})
    e = exps.add_parser("x-factor", help="maximise the X factor of the bundled model at lr 1e-6 and 1e-4",
                        description="The course's 'Maximize the X factor': alpha/beta KL target at all positions of "
                                    "B=4 x T=64 random tokens, Adam, one run per learning rate from the same start. "
                                    "Reports R with intervals, final loss and samples per lr.")
    common(e, "x-factor", 150, "1e-6,1e-4")
    e.add_argument("--model", metavar="bundled|PATH|HUB_ID", help="model to tilt")
    e.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast on CPU; off by default unless the CPU has native bf16")
    show_defaults(e, to_flat(x_factor.XFactorConfig()), {"lr": "lrs"})


def cmd_pretrain(args) -> int:
    from tokentilt.jobs.pretrain import PretrainConfig, run_pretrain

    flags = vars(args)
    cfg = merge(PretrainConfig, read_yaml(flags.get("config")), flags)
    with unfinished_on_interrupt(cfg.out):
        run_pretrain(cfg, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    return 0


@contextlib.contextmanager
def unfinished_on_interrupt(out: str):
    """Ctrl-C in a job that writes OUT.partial/ and renames it when done: say where the unfinished run is."""
    try:
        yield
    except KeyboardInterrupt as err:
        partial = Path(out).with_name(Path(out).name + ".partial")
        if str(err) or not partial.exists():
            raise
        raise KeyboardInterrupt(f"interrupted; the unfinished run stays in {partial}") from None


def cmd_experiment(args) -> int:
    from tokentilt.jobs.experiments import l1_vs_l2, like_x, x_factor

    module, cfg = {"l1-vs-l2": (l1_vs_l2, l1_vs_l2.L1VsL2Config()), "like-x": (like_x, like_x.LikeXConfig()),
                   "x-factor": (x_factor, x_factor.XFactorConfig())}[args.experiment]
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command", "experiment")}
    if "lr" in flags:
        if hasattr(cfg, "lrs"):
            flags["lrs"] = flags.pop("lr")
        elif len(flags["lr"]) > 1:
            raise UsageError(f"experiment {args.experiment} takes one --lr")
        else:
            flags["lr"] = flags["lr"][0]
    if "pretrain_steps" in flags:
        cfg.pretrain.steps = flags.pop("pretrain_steps")
    cfg = dataclasses.replace(cfg, **flags)
    if hasattr(cfg, "model"):
        check_lengths(cfg.model)
    with unfinished_on_interrupt(cfg.out):
        module.run(cfg, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from tokentilt.train import TrainingDiverged

    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        if args.command != "tilt" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"{args.command} runs in one process; only tilt trains under torchrun/accelerate launch")
        keep_freed_memory()  # training, sampling and the audit's (rows, V) tensors reuse freed memory
        return args.func(args)
    except KeyboardInterrupt as err:  # train.Interrupted says where the checkpoint is
        print(f"tokentilt: {str(err) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as err:
        print(f"tokentilt: training stopped: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, OSError) as err:  # every user-facing error class derives from these
        if os.environ.get("TOKENTILT_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"tokentilt: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
