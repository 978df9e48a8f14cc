"""The embedded model organism, a tiny Qwen2-VL trained from scratch on the scene world: its recipe and
configuration, model card and shape probe (``python -m mimic_utils.organism``)."""
