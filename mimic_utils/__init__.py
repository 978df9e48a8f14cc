"""Helper package of the MIMIC study: every notebook in ``notebooks/`` is a thin narrative over these modules.

One module per concern (the README's module table lists them all; docs/design.md explains the design):
``scenes`` draws the embedded image world and ``scene_formats`` writes it as COCO / OpenImages files,
``sources`` reads those formats into one index, ``tasks`` and ``mimic_benchmark`` build and store MIMIC,
``traindata`` writes training conversations, ``models`` and ``tiny`` load real and tiny VLMs,
``prompts``, ``evaluate`` and ``scoring`` ask and score them, ``masking``, ``attention`` and ``compute``
reach into attention, ``finetune`` and ``organism`` train, ``external_benchmarks`` and ``scene_ood`` hold
the public multi-image benchmarks, ``stats``, ``claims``, ``analysis``, ``transfer`` and ``report`` turn
predictions into findings, ``runner`` executes the study and ``perf`` measures it.
"""

__version__ = "0.1.0"
