"""The jobs, one module per command: `<job>.py` has `run(cfg, *, echo=print, progress=...) -> result`, and its
config, a torch-free dataclass the CLI builds its options from, sits beside it in `<job>_config.py`.

No job imports another job, nor another job's config (but a sweep's config builds its runs' TiltConfigs); the
components outside jobs/ import none of them.
"""
