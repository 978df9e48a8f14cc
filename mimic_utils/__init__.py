"""Helper package of the MIMIC study: every notebook in ``notebooks/`` is a thin narrative over these modules.

Modules are named for their concern (see ../shared/DESIGN.md §2): ``scenes`` draws the embedded image world,
``sources`` reads COCO / OpenImages annotations into one index, ``tasks`` and ``mimic_benchmark`` build and store MIMIC,
``traindata`` writes multi-image training conversations, ``models`` and ``tiny`` load real and tiny VLMs,
``prompts``, ``evaluate`` and ``scoring`` run and score them, ``masking`` and ``attention`` reach into attention,
``finetune`` trains, ``external_benchmarks`` loads the public multi-image sets, ``plots`` draws, ``runner`` executes the study.
"""

__version__ = "0.1.0"
