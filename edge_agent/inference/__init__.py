"""Inference: model bundles, runtime backends looked up by name, and the model wrapper."""
