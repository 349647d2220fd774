"""tokentilt: tilt a causal LM's next-token distribution toward or away from a token set."""

__version__ = "0.1.0"
