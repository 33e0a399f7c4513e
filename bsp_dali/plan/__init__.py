"""Stage 2, the plan: a dataset index + settings -> one :class:`SamplePlan` per sample.

``config`` (``SynthesisConfig``: every synthesis setting, declared once with its help text and
command-line option), ``augment`` (``SpatialConfig``: crop and flip drawing, and the CPU transform)
and ``planner`` (``Planner``: every random choice of a sample, as a pure function of
``(seed, epoch, index)``). Nothing downstream of the planner is random.

Imports only the data stage. The submodules are imported one by one, not by this package.
"""
