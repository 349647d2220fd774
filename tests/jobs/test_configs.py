"""Each job's config: check() only checks, and resolved() fills what depends on other fields, in a copy."""

import copy
import dataclasses

import pytest

from tokentilt.data.prompts import CHAT_PROMPTS
from tokentilt.jobs.audit_config import AuditConfig
from tokentilt.jobs.eval_config import EvalJobConfig
from tokentilt.jobs.experiments.l1_vs_l2_config import L1VsL2Config
from tokentilt.jobs.experiments.like_x_config import LikeXConfig
from tokentilt.jobs.experiments.x_factor_config import XFactorConfig
from tokentilt.jobs.export_config import ExportConfig
from tokentilt.jobs.generate_config import GenerateConfig
from tokentilt.jobs.pretrain_config import PretrainConfig
from tokentilt.jobs.sweep_config import SweepConfig
from tokentilt.jobs.tilt_config import FULL_LR, TiltConfig
from tokentilt.settings import DEFAULT_LR, EvalConfig, LoraArgs, TrainConfig

CONFIGS = [
    TiltConfig(),  # lr 0 and precision auto: both filled by resolved(), not by check()
    TiltConfig(objective="kl-uniform"),  # the default rate: 0 for this objective, in resolved()
    TiltConfig(lora=LoraArgs(lora=True), eval=EvalConfig(chat=True)),  # LoRA's lr, chat's prompts
    SweepConfig(lrs="1e-4", rates=["0.3", 0.5], objectives=[" tilt-distill ", ""], eval=EvalConfig(chat=True)),
    EvalJobConfig(eval=EvalConfig(chat=True)),
    GenerateConfig(),
    AuditConfig(model="m"),
    ExportConfig(source="bundled"),
    PretrainConfig(bf16=False),
    L1VsL2Config(),
    LikeXConfig(bf16=False, eval=EvalConfig(chat=True)),
    XFactorConfig(bf16=False),
    TrainConfig(precision="auto", bf16=True),
    EvalConfig(chat=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_check_leaves_the_config_unchanged(cfg):
    before = copy.deepcopy(cfg)
    if hasattr(cfg, "check"):  # ExportConfig and GenerateConfig are checked by the CLI and the job
        cfg.check()
    assert dataclasses.asdict(cfg) == dataclasses.asdict(before) and cfg == before


def test_tilt_resolved_fills_rate_lr_precision_and_prompts(monkeypatch):
    from tokentilt.training import engine

    monkeypatch.setattr(engine, "native_bf16", lambda device="auto": False)
    cfg = TiltConfig()
    filled = cfg.resolved()
    assert (filled.rate, filled.train.lr, filled.train.precision, filled.train.bf16) == (0.5, FULL_LR, "fp32", False)
    assert cfg.train.lr == 0.0 and cfg.train.precision == "auto"  # the caller's config is left as it was
    assert TiltConfig(objective="kl-uniform").resolved().rate == 0.0
    assert TiltConfig(lora=LoraArgs(lora=True)).resolved().train.lr == DEFAULT_LR
    assert TiltConfig(train=TrainConfig(lr=3e-4)).resolved().train.lr == 3e-4
    assert TiltConfig(eval=EvalConfig(chat=True)).resolved().eval.prompts == list(CHAT_PROMPTS)
    assert TiltConfig(train=TrainConfig(bf16=True)).resolved().train.precision == "bf16"
    assert filled.resolved() == filled  # filling twice changes nothing


def test_sweep_resolved_fills_the_axes_and_the_shared_settings(monkeypatch):
    from tokentilt.models import device

    monkeypatch.setattr(device, "native_bf16", lambda device="auto": True)
    cfg = SweepConfig(lrs="1e-4", rates=["0.3", 0.5], biases=2, objectives=[" tilt-distill ", ""])
    cfg.train.precision = "auto"
    filled = cfg.resolved()
    assert (filled.objectives, filled.lrs, filled.rates, filled.biases) == (["tilt-distill"], [1e-4], [0.3, 0.5], [2.0])
    assert (filled.train.precision, filled.train.bf16) == ("bf16", True)
    assert cfg.lrs == "1e-4" and cfg.train.precision == "auto"


def test_the_other_jobs_fill_only_chat_prompts():
    assert EvalJobConfig(eval=EvalConfig(chat=True)).resolved().eval.prompts == list(CHAT_PROMPTS)
    assert LikeXConfig(bf16=False, eval=EvalConfig(chat=True)).resolved().eval.prompts == list(CHAT_PROMPTS)
    assert XFactorConfig(bf16=False).resolved() == XFactorConfig(bf16=False)  # the course's prompts stay
