"""Targets: the sets a tilt moves toward or away from (imports no torch: the CLI reads selectors.py).

target.py     the Target type (a Protocol) and as_target(), which wraps a bare (V,) mask
tokens.py     TokenSet: a selector resolved to a (V,) mask over the vocabulary
phrases.py    PhraseSet: words and phrases of any number of tokens, tilted through a trie
selectors.py  the selector language (contains:, words:, regex:, ids:, not:, &, |), torch-free
wordlists/    the built-in lists for words:NAME and phrases:NAME
"""
