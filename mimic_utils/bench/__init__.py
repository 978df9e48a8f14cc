"""Tools that measure the study rather than run it: performance benchmarks and the GPU check
(``python -m mimic_utils.bench NAME``), lmms-eval interoperability (``python -m mimic_utils.bench.interop``) and the
executed notebooks opened in JupyterLab in a headless browser (``python -m mimic_utils.bench.labcheck``)."""
