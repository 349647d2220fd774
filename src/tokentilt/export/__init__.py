"""Export: a tilted model as a GGUF file for llama.cpp and ollama (gguf.py)."""

from tokentilt.export.gguf import ExportError, export_gguf

__all__ = ["ExportError", "export_gguf"]
