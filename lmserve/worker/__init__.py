"""The model runner: turns a scheduled batch into model inputs, runs the model, samples."""
