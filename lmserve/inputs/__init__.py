"""Input processing: tokenizer loading, validation and turning prompts into engine-core requests."""
