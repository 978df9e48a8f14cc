"""Tools that measure the study rather than run it: performance benchmarks and the GPU check
(``python -m mimic_utils.bench NAME``) and lmms-eval interoperability (``python -m mimic_utils.bench.interop``)."""
