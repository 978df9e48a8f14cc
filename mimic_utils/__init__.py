"""Helper package of the MIMIC study: every notebook in ``notebooks/`` is a thin narrative over these modules.

The folders follow the study, and imports run one way (``tests/unit/test_import_graph.py`` checks it):
``artifacts`` (files and paths) → ``data`` (notebook 01: scene world, annotation readers, tasks, benchmark,
prompt, training data) → ``models`` (the adapter, masking, tiny and real-size builders) → ``evaluation``
(notebooks 02 and 06: harness, scorers, caches, public benchmarks, lmms-eval tasks) → ``training``
(notebooks 04 and 05) → ``analysis`` (statistics, tables, claims, attention, plots, report). On top sit the
tools: ``runner`` (executes the study), ``launch`` (scaled-out finetuning), ``organism`` (the embedded model
organism) and ``bench`` (performance benchmarks, the GPU check, lmms-eval interop). The README's
"Where things live" lists every module; docs/design.md explains the design.
"""

__version__ = "0.1.0"
