"""The commands built on the pipeline, besides training: ``preview`` (grids, recipes and clips of
synthesized samples), ``extract`` (features of a trained encoder for downstream tasks),
``separability`` (``bsp-dali inspect``: how boundary-sensitive an encoder is) and ``demo_job`` (the
whole job on built-in data: ``bsp-dali demo``).

The submodules are imported one by one, not by this package.
"""
