"""raybrain: brain-guided training with control arms, seed replicates and verdicts.

Public entry points: :func:`raybrain.tasks.get` (train one config in-process),
:func:`raybrain.sweep.load_spec` / :func:`raybrain.sweep.run_sweep`, and the ``raybrain``
command line.
"""

__version__ = "0.1.0"
