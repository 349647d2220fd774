"""The `tokentilt` command. Each subcommand maps flags onto its job's config dataclass, checks it, and runs
`run(cfg, echo=..., progress=...)` of its job module, all through one table (COMMANDS).

Nothing here imports torch until a command has passed every check that needs no model: the parsers are built
from the torch-free config modules (settings.py and each job's jobs/<job>_config.py), and a command imports its
job after its checks, so `--help` and a bad flag or file answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokentilt.config import UsageError, merge, options, read_yaml
from tokentilt.data.textfiles import read_text_file
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.jobs.eval_config import EvalJobConfig
from tokentilt.jobs.experiments.l1_vs_l2_config import L1VsL2Config
from tokentilt.jobs.experiments.like_x_config import LikeXConfig
from tokentilt.jobs.experiments.x_factor_config import XFactorConfig
from tokentilt.jobs.export_config import ExportConfig
from tokentilt.jobs.generate_config import GenerateConfig
from tokentilt.jobs.pretrain_config import PretrainConfig
from tokentilt.jobs.profile_config import ProfileConfig
from tokentilt.jobs.sweep_config import SweepConfig
from tokentilt.jobs.tilt_config import FULL_LR, TiltConfig
from tokentilt.preflight import check_lengths, check_output, check_prompts, check_sampling, preflight_audit
from tokentilt.runs.folder import RunFolder
from tokentilt.settings import DEFAULT_LR as LORA_LR
from tokentilt.settings import check_options, check_sample_config
from tokentilt.targets.selectors import check_syntax, token_selector_only

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
                     the share of generated words that are entries. phrase:TEXT for one
  ids:1,2,3          explicit token ids
  not:SELECTOR       the complement; combine with ' & ' and ' | '

examples:
  tokentilt tilt --toward x --rate 0.5 --out runs/x-05     # tilt-distill at R* = 0.5, fluent, with rho
  tokentilt tilt --toward x --objective kl-uniform --out runs/x   # the course's recipe: R -> ~1, gibberish
"""


# the metavar of a field of this name in every subcommand; an int field's is N, a float's X
METAVARS = {
    "model": "bundled|PATH|HUB_ID",
    "reference": "bundled|PATH|HUB_ID",
    "toward": "SELECTOR",
    "out": "DIR",
    "eval_text": "FILE",
    "words": "FILE",
    "lora_targets": "NAMES",
    "system": "TEXT",
    "channels": "all|none|LIST",
}


def add_options(parser, cfg, skip=(), **custom) -> None:
    """One option per field of the config instance `cfg` (nested sections flat): --seq-len for seq_len, typed
    by the field, choices from its Literal type, help from its comment, the default from `cfg` in the help.

    Options default to SUPPRESS, so only the flags the user typed override the YAML (--config, added here too).
    custom[name] overrides add_argument's keywords for one field; flag= renames it, a flag without dashes is
    positional. Fields in `skip` stay YAML-only."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help="YAML file of option: value; flags override it"
    )
    for o in options(cfg):
        if o.name in skip:
            continue
        kw = {
            "help": o.help,
            "default": argparse.SUPPRESS,
            "metavar": METAVARS.get(o.name, {int: "N", float: "X"}.get(o.type)),
        }
        if o.type is bool:
            kw = {**kw, "action": argparse.BooleanOptionalAction if o.computed else "store_true", "metavar": None}
        elif o.type is list:
            kw["action"] = "append"
        else:
            kw.update(type=o.type, choices=o.choices)
        kw.update(custom.get(o.name, {}))
        kw["help"] = with_default(kw["help"], o.default)
        flag = kw.pop("flag", "--" + o.name.replace("_", "-"))
        kw = {k: v for k, v in kw.items() if v is not None}
        if flag.startswith("-"):
            parser.add_argument(flag, dest=o.name, **kw)
        else:  # positional, and so required
            parser.add_argument(flag, **{k: v for k, v in kw.items() if k != "default"})


def with_default(text: str, value) -> str:
    """The help text with the default appended, unless it is a switch or empty (the help says what empty means)."""
    if isinstance(value, bool) or value in ("", None, []):
        return text
    shown = (
        ",".join(map(str, value))
        if isinstance(value, (list, tuple))
        else f"{value:g}"
        if isinstance(value, float)
        else value
    )
    return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tokentilt",
        description="Fine-tune causal LMs with custom losses that tilt the next-token distribution toward "
        "(or away from) a token set, and measure what the tilt achieves and costs.",
        epilog="Run 'tokentilt COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "tilt",
        help="fine-tune a model toward a token set; measure R before and after",
        description="Fine-tune a model so that its generations use more tokens from a set. "
        "Writes config.yaml, metrics.jsonl, summary.json, loss.png, rate.png, "
        "report.md and model/ (Hugging Face format; with --lora also adapter/) to --out.",
        epilog=TILT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(
        p,
        TiltConfig(),
        skip=YAML_ONLY | {"patience"},
        lr={"help": f"learning rate; 0 = {FULL_LR:g}, or {LORA_LR:g} with --lora"},
    )

    p = sub.add_parser(
        "generate",
        help="sample continuations from a model, optionally with a decode-time bias",
        description="Print samples from a model. --bias B with --toward SELECTOR adds B to the "
        "logits of the set at every step (the decode-time baseline).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, GenerateConfig())

    p = sub.add_parser(
        "sweep",
        help="grid of tilt runs (objective x lr x rate/b) beside the decode-time baseline",
        description="Run a grid of tilt runs on one loaded model, always with the decode-time "
        "baseline (objective decode-bias) at the same rates/b and along a curve. "
        "Writes runs.jsonl, sweep.csv, sweep.md and pareto.png to --out; runs already "
        "in the folder are not redone. List flags take comma-separated values.",
        epilog="example:\n  tokentilt sweep --toward x --objective tilt-distill,kl-alpha-beta "
        "--rate 0.3,0.5 --bf16 --out runs/sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    axis = {"action": "store", "type": str, "metavar": "LIST"}  # comma-separated; sweep_axes splits it
    add_options(
        p,
        SweepConfig(),
        skip=YAML_ONLY | {"lr", "patience", "save_every", "keep", "report_to"},
        **{name: {**axis, "flag": f"--{flag}"} for flag, name in SWEEP_AXES.items()},
    )

    p = sub.add_parser(
        "eval",
        help="R with interval, perplexity, drift and degeneration of a model",
        description="Measure a model: R over samples with a 95%% interval, held-out perplexity, "
        "drift KL(reference || model) per token, distinct-1/2 and repetition. With "
        "--bias or --rate, also the decode-time baseline (the reference with a logit "
        "bias) on the same prompts, seeds and text.",
    )
    add_options(p, EvalJobConfig(), skip=YAML_ONLY | {"during_samples_per_prompt"}, out={"metavar": "FILE.json"})

    p = sub.add_parser(
        "profile",
        help="find the words and phrases a chat model over-uses in creative replies (its slop)",
        description="Sample a chat model's replies to 96 creative requests (stories, descriptions, "
        "letters, poems), count the words and phrases they use far more often than human text "
        "does (the plays, or --reference), and write them as a list for "
        "`tilt --toward phrases:OUT`, with OUT.tsv holding each entry's counts.",
        epilog="example:\n  tokentilt profile --out runs/slop.txt\n"
        "  tokentilt tilt --chat --requests creative --toward phrases:runs/slop.txt --ban --out runs/deslop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, ProfileConfig(), out={"metavar": "FILE.txt"}, reference={"metavar": "FILE"})
    add_audit_parser(sub)
    add_export_parser(sub)
    add_course_parsers(sub)
    return parser


YAML_ONLY = {"prompts"}  # a list of sentences reads better in a config file than as flags
COURSE_SKIP = YAML_ONLY | {"chat", "system", "requests"}  # the course's experiments sample raw text only


def add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's model as GGUF (llama.cpp, ollama) and its tilt as logit_bias",
        description="Export a tilted model where people run it: a GGUF file written with the gguf "
        "package (Llama and GPT-2 families), an ollama Modelfile beside it, and the "
        "run's decode-time tilt as a logit_bias JSON ({token id: b}) for "
        "OpenAI-compatible servers. Check what the export keeps with "
        "`tokentilt eval --model OUT.gguf`.",
        epilog="example:\n  tokentilt export runs/x --gguf runs/x.q8_0.gguf --type q8_0 --logit-bias runs/x.bias.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(
        p,
        ExportConfig(),
        source={"flag": "source", "metavar": "RUN_OR_MODEL"},
        gguf={"metavar": "OUT.gguf"},
        logit_bias={"metavar": "OUT.json"},
    )


def export_config(flags: dict) -> ExportConfig:
    cfg = merge(ExportConfig, read_yaml(flags.get("config")), flags)
    if cfg.toward:
        token_selector_only(cfg.toward, "export --logit-bias")
        check_syntax(cfg.toward)
    return cfg


# ------------------------------------------------------------------ commands


def keep_freed_memory() -> None:
    """Past a command's checks: malloc keeps freed memory, so that training, sampling and the audit's (rows, V)
    tensors reuse it (engine.py; imports torch)."""
    from tokentilt.training import engine

    engine.keep_freed_memory()


def preflight_eval(model: str, eval_cfg) -> None:
    """What a job's EvalConfig needs checked before the model is loaded."""
    check_sampling(eval_cfg.temperature, eval_cfg.top_k, eval_cfg.top_p)
    check_lengths(model, eval_seq_len=eval_cfg.eval_seq_len, new_tokens=eval_cfg.new_tokens)
    if eval_cfg.eval_text:
        read_text_file(eval_cfg.eval_text)  # missing, empty or not UTF-8


def tilt_config(flags: dict, out: bool = False):
    """TiltConfig from YAML (flags["config"]) and flags, checked as far as it can be without the model; with
    out=True, its output folder too. The job fills the defaults that depend on other fields (cfg.resolved())."""
    values = read_yaml(flags.get("config"))
    given = set(values) | set(flags)
    objective = flags.get("objective", values.get("objective", TiltConfig.objective))
    if "rate" in given and objective != "tilt-distill":
        raise UsageError(f"rate calibrates tilt-distill's bias; it does not apply to {objective}")
    if flags.get("ban", values.get("ban")) and given & {"rate", "bias"}:
        raise UsageError("--ban chooses the bias itself; give --ban, --rate or --bias, not several")
    if "bias" in given and "rate" not in given:
        values = {**values, "rate": 0.0}  # a bias the user gave is the tilt; the default rate gives way
    cfg = merge(TiltConfig, values, flags)
    lr = flags.get("lr", values.get("lr"))
    if lr is not None and not cfg.train.lr > 0:  # 0 means "auto" only as the API's default
        raise UsageError(f"lr must be positive, got {lr!r}")
    check_syntax(cfg.toward)
    cfg.eval.check()
    preflight_eval(cfg.model, cfg.eval)
    check_lengths(cfg.model, seq_len=cfg.train.seq_len)
    if out and not cfg.resume:  # the folder that --resume continues is checked after cfg.check(), and by the job
        check_output(cfg.out)
        RunFolder(cfg.out, cfg.overwrite)  # refuses a folder that holds a run, or is not ours
    cfg.check()
    if out and cfg.resume:
        check_output(cfg.out)
    return cfg


def generate_config(flags: dict) -> GenerateConfig:
    cfg = merge(GenerateConfig, read_yaml(flags.get("config")), flags)
    if cfg.samples <= 0:
        raise UsageError("--samples must be positive")
    if cfg.new_tokens <= 0:
        raise UsageError("--new-tokens must be positive")
    if cfg.bias and not cfg.toward:
        raise UsageError("--bias needs --toward SELECTOR")
    check_options(cfg.chat, cfg.system)
    if cfg.toward or "toward" in flags:
        check_syntax(cfg.toward)
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    check_prompts(cfg.prompt or None)
    check_lengths(cfg.model, new_tokens=cfg.new_tokens)
    check_sample_config(cfg.sample_config())
    return cfg


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


def sweep_config(flags: dict, out: bool = False):
    """SweepConfig from YAML and flags, checked as far as it can be without the model; with out=True, its
    output folder too. The job fills the axes and the precision (cfg.resolved())."""
    flags = sweep_axes(flags)
    cfg = merge(SweepConfig, sweep_axes(read_yaml(flags.get("config"))), flags)
    token_selector_only(cfg.toward, "sweep")
    check_syntax(cfg.toward)
    cfg.eval.check()
    preflight_eval(cfg.model, cfg.eval)
    check_lengths(cfg.model, seq_len=cfg.train.seq_len)
    if out:
        check_output(cfg.out)
    cfg.check()
    return cfg


@contextlib.contextmanager
def sweep_interrupted(cfg: SweepConfig):
    """Ctrl-C in a sweep: say how many finished runs runs.jsonl keeps (the same command continues)."""
    try:
        yield
    except KeyboardInterrupt:
        log = Path(cfg.out) / "runs.jsonl"
        if not log.exists():
            raise KeyboardInterrupt("interrupted before the first run finished; nothing was written") from None
        runs = log.read_text().count('"kind": "run"')  # runs.jsonl is written by json.dumps
        raise KeyboardInterrupt(f"interrupted; {runs} finished runs are kept in {log}; the same command continues")


def eval_config(flags: dict) -> EvalJobConfig:
    cfg = merge(EvalJobConfig, read_yaml(flags.get("config")), flags)
    cfg.eval.check()
    check_syntax(cfg.toward)  # a bad selector fails here, not after a 25 s model load
    for name in {cfg.model, cfg.reference}:
        preflight_eval(name, cfg.eval)
    if cfg.out:
        check_output(cfg.out, kind="file")
    return cfg


def profile_config(flags: dict) -> ProfileConfig:
    cfg = merge(ProfileConfig, read_yaml(flags.get("config")), flags)
    cfg.check()
    check_output(cfg.out, kind="file")
    out = Path(cfg.out).expanduser()
    if not cfg.overwrite and (out.exists() or out.with_name(out.name + ".tsv").exists()):
        raise UsageError(f"{out} exists; give --overwrite to replace it")
    if cfg.reference and not Path(cfg.reference).expanduser().is_file():
        raise UsageError(f"reference text not found: {cfg.reference}")
    check_lengths(cfg.model, new_tokens=cfg.new_tokens)
    return cfg


# ------------------------------------------------------------------ audit


def add_audit_parser(sub) -> None:
    """`tokentilt audit MODEL --reference BASE`: find a tilt somebody else planted."""
    p = sub.add_parser(
        "audit",
        help="find which tokens a fine-tune tilted, and what they have in common",
        description="Compare MODEL with the model it was fine-tuned from: every token's lift (mean "
        "log-prob difference) on held-out text and on samples of both models, candidate "
        "features from the vocabulary ranked by how well they separate lifted from "
        "unlifted tokens (AUROC), and whether the best one stands out. Writes "
        "audit.json, report.md and lift.png to --out.",
        epilog="example:\n  tokentilt audit runs/x/model --reference bundled --out runs/x-audit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, AuditConfig(), model={"flag": "model", "metavar": "MODEL"})


def audit_config(flags: dict) -> AuditConfig:
    cfg = merge(AuditConfig, read_yaml(flags.get("config")), flags)  # as every job: dataclass <- YAML <- flags
    preflight_audit(cfg)
    return cfg


# ------------------------------------------------------------------ pretrain and the course's experiments


def add_course_parsers(sub) -> None:
    """`tokentilt pretrain` and `tokentilt experiment NAME`. Their bf16 defaults to the hardware's native
    precision, which takes torch to find out: the instances that the options are read from give it (a switch
    shows no default)."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain Model 5 (compact GPT-2) on the Shakespeare plays",
        description="Train Model 5 from scratch on the plays' train split with AdamW, dropout and "
        "early stopping on validation loss. Writes config.yaml, metrics.jsonl, loss.png, "
        "summary.json (val loss beside the unigram baseline), report.md and model/ "
        "(safetensors) to --out.",
        epilog="example:\n  tokentilt pretrain --steps 300 --out runs/pretrain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, PretrainConfig(bf16=False))

    p = sub.add_parser(
        "experiment",
        help="run one of the course's experiments: l1-vs-l2, like-x, x-factor",
        description="Reproduce one of the course's experiments. Each writes summary.json, plots and "
        "report.md to --out.",
    )
    exps = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    e = exps.add_parser(
        "l1-vs-l2",
        help="one scalar, target 5, SGD lr 0.05 under L1 and under L2",
        description="Fit one scalar parameter to 5 with SGD under L1 and under L2: L1 oscillates "
        "around the target, L2 converges. Records l1_at_2, l2_at_2, l2_final_error, "
        "l1_oscillation.",
    )
    add_options(e, L1VsL2Config())
    e = exps.add_parser(
        "like-x",
        help="train Model 5 to like tokens containing x (random inputs, last position)",
        description="The course's 'Train a model to like X': KL toward uniform over x-tokens on the "
        "final position of random 256-token inputs. Counts x-tokens among 200 generated "
        "tokens before and after. Pretrains Model 5 first unless --checkpoint is given.",
    )
    add_options(e, LikeXConfig(bf16=False), skip=COURSE_SKIP, checkpoint={"metavar": "DIR"})
    e = exps.add_parser(
        "x-factor",
        help="maximise the X factor of the bundled model at lr 1e-6 and 1e-4",
        description="The course's 'Maximize the X factor': alpha/beta KL target at all positions of "
        "B=4 x T=64 random tokens, Adam, one run per learning rate from the same start. "
        "Reports R with intervals, final loss and samples per lr.",
    )
    add_options(e, XFactorConfig(bf16=False), skip=COURSE_SKIP, lrs={"flag": "--lr", "metavar": "X"})


def course_config(cls) -> Callable[[dict], object]:
    """flags -> the config of pretrain or an experiment: dataclass <- YAML <- flags."""

    def config(flags: dict):
        cfg = merge(cls, read_yaml(flags.get("config")), flags)
        if hasattr(cfg, "model"):
            check_lengths(cfg.model)
        return cfg

    return config


@contextlib.contextmanager
def unfinished_on_interrupt(cfg):
    """Ctrl-C in a job that writes OUT.partial/ and renames it when done: say where the unfinished run is."""
    try:
        yield
    except KeyboardInterrupt as err:
        partial = Path(cfg.out).with_name(Path(cfg.out).name + ".partial")
        if str(err) or not partial.exists():
            raise
        raise KeyboardInterrupt(f"interrupted; the unfinished run stays in {partial}") from None


# ------------------------------------------------------------------ the table: each command, its job


@dataclass(frozen=True)
class Command:
    job: str  # the job module: its run(cfg, *, echo, progress) does the work
    config: Callable[[dict], object]  # parsed flags -> the job's config, checked as far as it can be without torch
    interrupted: Callable = contextlib.nullcontext  # cfg -> a context that words Ctrl-C for this job


COMMANDS = {
    "tilt": Command("tokentilt.jobs.tilt", lambda flags: tilt_config(flags, out=True)),
    "generate": Command("tokentilt.jobs.generate", generate_config),
    "sweep": Command("tokentilt.jobs.sweep", lambda flags: sweep_config(flags, out=True), sweep_interrupted),
    "eval": Command("tokentilt.jobs.eval", eval_config),
    "profile": Command("tokentilt.jobs.profile", profile_config),
    "audit": Command("tokentilt.jobs.audit", audit_config, unfinished_on_interrupt),
    "export": Command("tokentilt.jobs.export", export_config),
    "pretrain": Command("tokentilt.jobs.pretrain", course_config(PretrainConfig), unfinished_on_interrupt),
    "l1-vs-l2": Command("tokentilt.jobs.experiments.l1_vs_l2", course_config(L1VsL2Config), unfinished_on_interrupt),
    "like-x": Command("tokentilt.jobs.experiments.like_x", course_config(LikeXConfig), unfinished_on_interrupt),
    "x-factor": Command("tokentilt.jobs.experiments.x_factor", course_config(XFactorConfig), unfinished_on_interrupt),
}


def run_command(args) -> int:
    """Check the command's config, then import its job (and so torch) and run it. Progress goes to stdout,
    as echo's lines: stderr is for the error line and the progress bar (on a terminal, or TOKENTILT_PROGRESS=1)."""
    command = COMMANDS[args.experiment if args.command == "experiment" else args.command]
    cfg = command.config(vars(args))
    job = importlib.import_module(command.job)  # past the checks that need no torch
    keep_freed_memory()
    with command.interrupted(cfg):
        job.run(cfg, echo=print, progress=sys.stderr.isatty() or os.environ.get("TOKENTILT_PROGRESS") == "1")
    return 0


def training_diverged() -> type | tuple:
    """train.TrainingDiverged, or () (which no exception matches) when no job imported train.py, and so torch."""
    train = sys.modules.get("tokentilt.training.loop")
    return train.TrainingDiverged if train else ()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        if args.command != "tilt" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"{args.command} runs in one process; only tilt trains under torchrun/accelerate launch")
        return run_command(args)
    except KeyboardInterrupt as err:  # train.Interrupted says where the checkpoint is
        print(f"tokentilt: {str(err) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except training_diverged() as err:
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
