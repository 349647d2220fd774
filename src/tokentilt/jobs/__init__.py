"""The jobs: each one reads a config dataclass, runs, and writes a run folder. No job imports another."""
