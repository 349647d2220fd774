"""Training: where a tilt is put into the weights.

loop.py             train(): setup -> step -> evaluate -> checkpoint, for any objective
engine.py           devices, precision and processes (Accelerate); memory per stage
checkpoint.py       step checkpoints and bitwise resume
placements.py       the Placement type: HeadRows, WholeModel, lora(); placement.train(b) -> history
head_rows.py        the head-rows fit: the set's rows of the untied output head
rate.py             train_to_rate(): the rounds that correct b until the trained model's R is R*
rate_checkpoint.py  those rounds' checkpoints, for --resume
"""

from tokentilt.training.loop import frozen_copy, train
from tokentilt.training.placements import HeadRows, Objective, Placement, WholeModel, lora, whole_model
from tokentilt.training.rate import train_to_rate

__all__ = [
    "HeadRows",
    "Objective",
    "Placement",
    "WholeModel",
    "frozen_copy",
    "lora",
    "train",
    "train_to_rate",
    "whole_model",
]
