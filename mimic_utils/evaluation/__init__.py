"""Asking models and scoring answers (notebooks 02 and 06): the evaluation harness, the official scorers, the
answers cache, the public multi-image benchmarks and the lmms-eval task export."""
