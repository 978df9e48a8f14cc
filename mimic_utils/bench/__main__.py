"""``python -m mimic_utils.bench NAME [args]``: one performance benchmark (see :mod:`mimic_utils.bench.perf`)."""

from mimic_utils.bench.perf import main

main()
