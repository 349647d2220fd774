"""The course's own pieces: Model 5 (gpt.py) and its GPT-2 tokenizer, its pretraining (pretraining.py,
pretraining_config.py), and the L1/L2 regression losses (regression.py)."""
