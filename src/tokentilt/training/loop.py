"""The training loop on Accelerate: setup -> step -> evaluate -> checkpoint, in plain view.

Every process draws the same global batch (batch x processes x grad_accum rows) from one
generator seeded by cfg.seed, and takes its own rows; so the data of a step depend on the seed
and the step only, never on the number of processes.
"""

from __future__ import annotations

import copy
import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tokentilt.objectives.fused import Head, fusable_head, heads_return_inputs, logits_come_from_head
from tokentilt.objectives.losses import FUSED, ObjectiveContext
from tokentilt.settings import ATTENTIONS, OPTIMIZERS, Attention, Optimizer, TrainConfig  # noqa: F401 (re-exported)
from tokentilt.training import checkpoint
from tokentilt.training.engine import broadcast, keep_freed_memory, make_accelerator

EAGER_MAX_LEN = 128  # auto: eager attention up to this many tokens per sequence, on a CPU


def training_attention(model, cfg: TrainConfig, device: str) -> str | None:
    """The attention a Hugging Face model should train with, or None to leave it as it is.

    auto = eager for sequences of at most EAGER_MAX_LEN tokens on a CPU, else the model's own. On
    this CPU, torch's fused (flash) SDPA kernel takes about twice as long as eager attention's bf16
    matmuls for the forward and backward of short sequences (64 tokens: 6.9 against 4.0 ms per
    layer), and eager falls behind from about 256 tokens, where its (T, T) weights grow; see
    benchmarks/README.md (P1). Both are exact attention, equal up to rounding. model = leave it;
    eager / sdpa = that one. A model without set_attn_implementation (Model 5) keeps its own, and
    asking it for one by name is an error.
    """
    settable = callable(getattr(model, "set_attn_implementation", None))
    if cfg.attention == "model" or (cfg.attention == "auto" and not settable):
        return None
    if not settable:
        raise ValueError(f"attention {cfg.attention}: this model cannot switch its attention (use auto or model)")
    if cfg.attention == "auto":
        return "eager" if device == "cpu" and cfg.seq_len <= EAGER_MAX_LEN else None
    return cfg.attention


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the newest checkpoint (if any) is the last good state."""


class Interrupted(KeyboardInterrupt):
    """SIGINT during training: a checkpoint was saved at the step boundary."""


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # fused: one kernel over all parameters; the per-tensor loop took a fifth of a bf16 step on this CPU
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).logits  # (B, T, V)


_MATMUL_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # as autocast would


@dataclass
class _Heads:
    """The output heads that the fused loss takes over (the model's and the reference's), or none."""

    model: torch.nn.Module | None = None
    reference: torch.nn.Module | None = None

    @classmethod
    def find(cls, model, reference, objective, cfg: TrainConfig) -> _Heads:
        head = fusable_head(model) if cfg.loss_chunk and objective in FUSED else None
        if head is not None and not logits_come_from_head(model, head):
            head = None  # e.g. logits soft-capped after the head: only the dense form is right
        ref_head = fusable_head(reference) if reference is not None and head is not None else None
        if reference is not None and ref_head is None:
            return cls()  # the fused form needs the reference's head inputs too: dense for both
        return cls(head, ref_head)


def _loss(
    wrapped, reference, objective, heads: _Heads, ctx: ObjectiveContext, input_ids, accelerator, cfg: TrainConfig
) -> torch.Tensor:
    """One micro-batch's loss in fp32: the objective on the logits, or (heads found) its fused form on
    the head's inputs, which never holds (B·T, V) logits."""
    with heads_return_inputs(*(h for h in (heads.model, heads.reference) if h is not None)):  # none: dense
        if reference is not None:
            with torch.no_grad(), accelerator.autocast():
                ref_out = logits_of(reference, input_ids)  # (B, T, V), or (B, T, d) with heads
        out = logits_of(wrapped, input_ids)  # (B, T, V) fp32 (Accelerate casts back), or (B, T, d) with heads
    if heads.model is None:
        ctx.ref_logits = ref_out if reference is not None else None
        return objective(out, input_ids, ctx)
    ctx.ref_hidden = ref_out if reference is not None else None
    head = Head(heads.model.weight, _MATMUL_DTYPE[cfg.precision], cfg.loss_chunk)
    return FUSED[objective](out, head, input_ids, ctx)


class _SigintAtStepBoundary:
    """While active, the first Ctrl-C only raises a flag that the loop reads between steps; a second
    one interrupts at once. Outside the main thread (or without a run folder) nothing changes."""

    def __init__(self, active: bool):
        # a process started in the background by a non-interactive shell ignores SIGINT; keep it so
        self.active = (
            active
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        )
        self.raised = False

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self.previous)


@torch.no_grad()
def _outputs_finite(model, input_ids: torch.Tensor) -> bool:
    """One forward in eval mode (no dropout, so no random draws) on the last micro-batch."""
    model.eval()
    finite = bool(torch.isfinite(logits_of(model, input_ids)).all())
    model.train()
    return finite


def _any(flag: bool, accelerator) -> bool:
    """True on every process if it is True on any (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def train(
    model,
    objective: Callable,
    ctx: ObjectiveContext,
    next_batch: Callable[[torch.Generator, int], torch.Tensor],
    cfg: TrainConfig,
    reference=None,
    evaluate: Callable[[int], dict] | None = None,
    log: Callable[[dict], None] | None = None,
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
) -> list[dict]:
    """Run cfg.steps optimizer steps of `objective` and return one record per step.

    next_batch(generator, rows) -> (rows, T) token ids of the global batch. `reference`, if given,
    is a frozen model whose logits on the same micro-batch go in ctx.ref_logits (tilt-distill); it
    is moved to the training device but never wrapped for DDP. evaluate(step) -> dict runs on the
    main process only and is merged into the record every cfg.eval_every steps; with
    cfg.patience > 0 its "val_loss" drives early stopping and the best weights are kept. log(record)
    runs on the main process. With run_dir, checkpoints go to run_dir/checkpoints (every
    cfg.save_every steps, and on SIGINT), trackers to run_dir, and resume=True continues from the
    newest checkpoint there.
    """
    cfg.check()
    cfg = cfg.resolved()  # the precision settled: --bf16, or auto on this hardware
    run = _prepare(model, reference, objective, ctx, cfg, run_dir, resume)
    accelerator, history, early_stop = run.accelerator, run.history, run.early_stop
    best_state = None
    bar = tqdm(
        range(len(history) + 1, cfg.steps + 1),
        desc="train",
        initial=len(history),
        total=cfg.steps,
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    model.train()
    if run.switch_attention:
        model.set_attn_implementation(run.attention)  # put back in _finish
    try:
        with _SigintAtStepBoundary(active=run_dir is not None) as sigint:
            for step in bar:
                global_ids = next_batch(run.generator, cfg.global_batch(accelerator.num_processes))  # (rows, T)
                step_loss, grad_norm, input_ids = _one_step(
                    run.wrapped, reference, objective, run.heads, ctx, global_ids, run.optimizer, accelerator, cfg, step
                )
                if step == cfg.steps and _any(not _outputs_finite(run.wrapped, input_ids), accelerator):
                    # an earlier step's bad update shows in the next loss; the last one would reach sampling
                    raise TrainingDiverged(f"the model's outputs became non-finite after step {step}")
                record = _record(step, step_loss, grad_norm, model, evaluate, accelerator, cfg)
                history.append(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", **({"R": f"{record['rate']:.2f}"} if "rate" in record else {})
                )
                if accelerator.is_main_process and log is not None:
                    log(record)
                if cfg.report_to != "none":
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                stop, best = _early_stop(record, early_stop, model, cfg)
                best_state = best if best is not None else best_state
                interrupted = _any(sigint.raised, accelerator)
                saved = _save_if_due(run, step, model, interrupted, cfg)
                if interrupted:
                    raise Interrupted(
                        f"interrupted after step {step}; checkpoint {saved}; "
                        "continue with the same command plus --resume"
                    )
                if stop:
                    bar.write(
                        f"early stop at step {step}: val_loss has not improved for "
                        f"{early_stop['bad_evals']} evaluations"
                    )
                    break
    except TrainingDiverged as err:
        _diverged(err, run.ckpt_dir, run_dir, len(history) + 1, accelerator)
    finally:
        bar.close()
        _finish(run, model, ctx, cfg)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    accelerator.wait_for_everyone()
    return history


@dataclass
class _Run:
    """What train() sets up before its first step and puts back after its last."""

    accelerator: object
    optimizer: object  # accelerate's wrapper; .optimizer is torch's
    wrapped: torch.nn.Module  # the model as accelerate prepared it (DDP, autocast)
    generator: torch.Generator  # the batches' stream, the same on every process
    heads: _Heads
    ckpt_dir: Path | None
    history: list[dict]
    early_stop: dict
    own_forward: object  # the model's instance-level forward, if it had one
    attention: str | None  # the attention implementation to train with (None: keep the model's)
    own_attention: str | None
    switch_attention: bool


def _prepare(model, reference, objective, ctx: ObjectiveContext, cfg: TrainConfig, run_dir, resume: bool) -> _Run:
    """Accelerator, seeds, optimizer, the resumed state, fused heads, attention, trackers: train()'s set-up."""
    accelerator = make_accelerator(cfg.device, cfg.precision, cfg.grad_accum, cfg.report_to, run_dir)
    if accelerator.device.type == "cpu":
        keep_freed_memory()  # each step's large tensors reuse the last step's memory (see there)
    torch.manual_seed(cfg.seed + accelerator.process_index)  # dropout: its own stream on each process
    generator = torch.Generator().manual_seed(cfg.seed)  # batches: the same stream on every process
    optimizer = make_optimizer(model.parameters(), cfg)
    ckpt_dir = None if run_dir is None else Path(run_dir) / "checkpoints"
    history: list[dict] = []
    early_stop = {"best_val": float("inf"), "bad_evals": 0}
    if resume:
        restored = checkpoint.load(ckpt_dir, model, optimizer, generator, accelerator)
        history, early_stop = restored.history, restored.early_stop
    heads = _Heads.find(model, reference, objective, cfg)  # before prepare(): the probe runs in fp32
    own_forward = model.__dict__.get("forward")  # usually none: model.forward is the class's method
    attention = training_attention(model, cfg, accelerator.device.type)
    own_attention = getattr(model.config, "_attn_implementation", None) if attention else None
    wrapped, optimizer = accelerator.prepare(model, optimizer)  # DDP wrapper and autocast around forward
    if reference is not None:
        reference.to(accelerator.device)
    if heads.reference is not None:  # frozen: its weight is cast for the matmul once per training
        ctx.ref_head = Head(heads.reference.weight, _MATMUL_DTYPE[cfg.precision], cfg.loss_chunk)
    if cfg.report_to != "none":
        accelerator.init_trackers(
            "tensorboard" if cfg.report_to == "tensorboard" else "tokentilt",
            config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str))},
        )
    switch = attention is not None and attention != own_attention
    return _Run(
        accelerator,
        optimizer,
        wrapped,
        generator,
        heads,
        ckpt_dir,
        history,
        early_stop,
        own_forward,
        attention,
        own_attention,
        switch,
    )


def _record(step: int, step_loss, grad_norm, model, evaluate, accelerator, cfg: TrainConfig) -> dict:
    """The step's record: mean loss over processes, and every cfg.eval_every steps evaluate(step) from the main
    process, broadcast to the others."""
    record = {"step": step, "loss": accelerator.reduce(step_loss, "mean").item(), "grad_norm": grad_norm, "lr": cfg.lr}
    if evaluate is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
        result = None
        if accelerator.is_main_process:
            model.eval()
            result = evaluate(step)
            model.train()
        record.update(broadcast(result, accelerator))
    return record


def _save_if_due(run: _Run, step: int, model, interrupted: bool, cfg: TrainConfig):
    """A checkpoint when interrupted or every cfg.save_every steps (not after the last) -> its path, or None."""
    if run.ckpt_dir is None or not (
        interrupted or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps)
    ):
        return None
    return checkpoint.save(
        run.ckpt_dir,
        step,
        model,
        run.optimizer.optimizer,
        run.generator,
        run.history,
        run.early_stop,
        run.accelerator,
        cfg.keep,
    )


def _finish(run: _Run, model, ctx: ObjectiveContext, cfg: TrainConfig) -> None:
    """Put back what _prepare changed on the model, end the trackers, drop the reference's tensors."""
    _restore_forward(model, run.own_forward)
    if run.switch_attention and run.own_attention:
        model.set_attn_implementation(run.own_attention)
    if cfg.report_to != "none":
        run.accelerator.end_training()
    ctx.ref_logits = ctx.ref_hidden = ctx.ref_head = None


def _one_step(
    wrapped,
    reference,
    objective,
    heads: _Heads,
    ctx: ObjectiveContext,
    global_ids: torch.Tensor,
    optimizer,
    accelerator,
    cfg: TrainConfig,
    step: int,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """One optimizer step over this process's micro-batches of the global batch (rows, T)
    -> (the step's mean loss, the gradient norm, the last micro-batch's ids)."""
    rank, processes = accelerator.process_index, accelerator.num_processes
    step_loss = torch.zeros((), device=accelerator.device)
    for micro in range(cfg.grad_accum):
        first = (micro * processes + rank) * cfg.batch
        input_ids = global_ids[first : first + cfg.batch].to(accelerator.device)  # (B, T)
        with accelerator.accumulate(wrapped):
            loss = _loss(wrapped, reference, objective, heads, ctx, input_ids, accelerator, cfg)
            if _any(not torch.isfinite(loss).item(), accelerator):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}")
            accelerator.backward(loss)  # divided by grad_accum
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(
                    wrapped.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                )
            optimizer.step()  # only when gradients are synced
            optimizer.zero_grad(set_to_none=True)
        step_loss += loss.detach() / cfg.grad_accum
    return step_loss, float(grad_norm), input_ids


def _early_stop(record: dict, early_stop: dict, model, cfg: TrainConfig) -> tuple[bool, dict | None]:
    """Update early_stop from the record's val_loss -> (stop now, a copy of the weights if they are the best yet)."""
    if not (cfg.patience and "val_loss" in record):
        return False, None
    if record["val_loss"] < early_stop["best_val"]:
        early_stop.update(best_val=record["val_loss"], bad_evals=0)
        return False, copy.deepcopy(model.state_dict())
    early_stop["bad_evals"] += 1
    return early_stop["bad_evals"] >= cfg.patience, None


def _diverged(err: TrainingDiverged, ckpt_dir, run_dir, step: int, accelerator):
    """Record the failure in run_dir/failure.json and raise it again with where to go on from."""
    newest = checkpoint.checkpoints(ckpt_dir) if ckpt_dir is not None else []
    where = f"; newest good checkpoint: {newest[-1][1]}" if newest else "; no checkpoint was saved"
    if run_dir is not None and accelerator.is_main_process:
        (Path(run_dir) / "failure.json").write_text(
            json.dumps({"reason": str(err), "step": step, "checkpoint": str(newest[-1][1]) if newest else None}) + "\n"
        )
    raise TrainingDiverged(f"{err}; lower the learning rate{where}") from None


def _restore_forward(model, own_forward) -> None:
    """Undo what Accelerate's prepare() did to `model`: put back its own forward (without the
    autocast wrapper) and drop the "prepared" mark. With the mark left, the next prepare() of the
    same model (tilt --rate's rounds, a sweep, x-factor's learning rates) returned it as it was,
    and that training ran in fp32 although bf16 was asked for."""
    if own_forward is None:
        model.__dict__.pop("forward", None)
    else:
        model.forward = own_forward
    for mark in ("_original_forward", "_is_accelerate_prepared"):
        model.__dict__.pop(mark, None)


def frozen_copy(model):
    """A detached reference copy of `model` that never trains."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference
