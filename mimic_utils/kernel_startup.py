# Run before the first cell by every kernel that `python -m mimic_utils.runner` starts (the runner points
# PYTHONSTARTUP here; IPython runs this file in the notebook's namespace, hence the underscore names, deleted at
# the end). It keeps progress bars and library noise out of a notebook that nobody watches; interactive
# sessions never run it, so there bars still show, as widgets in JupyterLab and as text in a terminal. It
#
# * turns every tqdm bar off, also those the study asks for with ``disable=False`` (``TQDM_DISABLE`` only
#   changes the default): an executed notebook would otherwise keep one stream output per refresh;
# * ignores tqdm's own warnings (``IProgress not found`` where ipywidgets is missing) and deprecation
#   notices raised inside libraries (``FutureWarning``, ``DeprecationWarning``), while warnings from the
#   study's code and notebooks still show;
# * lowers loggers that announce optional kernels they could not load (bitsandbytes) to errors.


def _quiet_notebook(noisy_warning_modules: str = r"(?!mimic_utils|__main__)", noisy_loggers=("bitsandbytes",)) -> None:
    """Quiet the kernel: ``noisy_warning_modules`` are the libraries whose deprecation notices say nothing
    about the study (all but ours), ``noisy_loggers`` report optional speed-ups they could not load."""
    import logging
    import warnings

    from tqdm import std

    warnings.filterwarnings("ignore", category=std.TqdmWarning)
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=noisy_warning_modules)
    for name in noisy_loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    init = std.tqdm.__init__
    if not getattr(init, "quiet", False):
        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            init(self, *args, **kwargs)

        quiet_init.quiet = True
        std.tqdm.__init__ = quiet_init


_quiet_notebook()
del _quiet_notebook
