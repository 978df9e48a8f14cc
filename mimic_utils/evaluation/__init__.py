"""Asking models and scoring answers (notebooks 02 and 06): the evaluation harness, the official scorers, the
answers cache, the public multi-image benchmarks (scored by letter or by option likelihood) and the lmms-eval
task export."""
