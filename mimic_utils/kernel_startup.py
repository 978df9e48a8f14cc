# Run before the first cell by every kernel that `python -m mimic_utils.runner` starts (the runner points
# PYTHONSTARTUP here; IPython runs that file in the notebook's namespace, hence the underscore name).
# Progress bars and library warnings stay out of the executed notebooks; see artifacts.quiet_notebook.
from mimic_utils.artifacts import quiet_notebook as _quiet_notebook

_quiet_notebook()
del _quiet_notebook
