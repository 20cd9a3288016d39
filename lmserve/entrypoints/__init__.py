"""Ways in: the offline `LLM` class and the `lmserve` command line."""
