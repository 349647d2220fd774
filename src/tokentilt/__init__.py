"""tokentilt: tilt a causal LM's next-token distribution toward or away from a token set.

The Python API, the same operations as the `tokentilt` command:

    from tokentilt import TiltConfig, run_tilt
    summary = run_tilt(TiltConfig(toward="x", rate=0.5, out="runs/x"))
    print(summary["rate_after"], summary["rho"])

Names load on first use, so `import tokentilt` stays light (no torch until it is needed).
"""

import importlib

__version__ = "0.1.0"

# name -> the module that defines it: jobs (tokentilt.jobs.*) and the components they share; each job's config
# comes from the torch-free module beside it (tokentilt.jobs.<job>_config)
_EXPORTS = {
    # jobs and their configs
    "TiltConfig": "tokentilt.jobs.tilt_config",
    "run_tilt": "tokentilt.jobs.tilt",
    "SweepConfig": "tokentilt.jobs.sweep_config",
    "run_sweep": "tokentilt.jobs.sweep",
    "evaluate_model": "tokentilt.jobs.eval",
    "AuditConfig": "tokentilt.jobs.audit_config",
    "run_audit": "tokentilt.jobs.audit",
    "PretrainConfig": "tokentilt.jobs.pretrain_config",
    "run_pretrain": "tokentilt.jobs.pretrain",
    # components
    "load_model": "tokentilt.models.load",
    "save_model": "tokentilt.models.load",
    "GPT": "tokentilt.course.gpt",
    "GPTConfig": "tokentilt.course.gpt",
    "resolve_set": "tokentilt.targets.tokens",
    "TokenSet": "tokentilt.targets.tokens",
    "OBJECTIVES": "tokentilt.objectives.losses",
    "TrainConfig": "tokentilt.settings",
    "EvalConfig": "tokentilt.settings",
    "measure": "tokentilt.measurement.evaluate",
    "measure_rate": "tokentilt.measurement.evaluate",
    "SampleConfig": "tokentilt.settings",
    "sample": "tokentilt.measurement.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokentilt' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
