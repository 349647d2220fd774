"""The lean decoding step: a Llama step without Hugging Face's per-token overhead (llama_step.py) and
packed oneDNN linears (packed.py)."""
