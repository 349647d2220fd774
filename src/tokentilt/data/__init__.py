"""Data: the text a run trains and measures on (corpus.py: the plays, split by play), the prompts
(prompts.py), chat templates (chat.py), and user text files (textfiles.py)."""
