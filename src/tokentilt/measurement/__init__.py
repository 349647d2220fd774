"""Measurement: what a model does, and what a tilt costs, on text that training never saw.

sampling.py    the KV-cache sampler, with the decode-time tilt of a Target
metrics.py     R with its interval, perplexity, drift, distinct-n; forward_batches (no-grad passes)
evaluate.py    measure(): R and every cost of one model, before or after training
intervals.py   rho's and the drift ratio's interval (a paired bootstrap over windows), target_met
calibrate.py   the decode-time bias b for a requested R*, and the rate rounds' correction of b
importance.py  R at another b from draws already made (importance weights)
"""

from tokentilt.measurement.evaluate import held_out_windows, measure, measure_rate
from tokentilt.measurement.metrics import mean_ci
from tokentilt.measurement.sampling import Samples, sample

__all__ = ["Samples", "held_out_windows", "mean_ci", "measure", "measure_rate", "sample"]
