"""`tokentilt pretrain`'s settings (pretrain.py), without torch: how Model 5 is pretrained (settings.Pretraining,
what course/pretraining.py reads; like-x pretrains with it too) and what the job adds, its report and folder."""

from __future__ import annotations

from dataclasses import dataclass

from tokentilt.course.pretraining_config import Pretraining


@dataclass
class PretrainConfig(Pretraining):
    """One pretraining run of Model 5. Sized so the defaults finish in minutes on 2 CPU cores."""

    sample_tokens: int = 40  # tokens per sample shown in report.md
    out: str = "runs/pretrain"  # output folder
    overwrite: bool = False  # replace the output folder if it already holds a run

    def check(self) -> None:
        if self.sample_tokens < 1:
            raise ValueError("eval-every, eval-windows and sample-tokens must be >= 1")
        super().check()
