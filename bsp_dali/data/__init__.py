"""Stage 1, the data: video files -> a dataset index (what there is, and which files are usable).

``probe`` (one file: usable or not, and why), ``ingest`` (``bsp-dali index``: discovery, parallel
incremental probing, the manifest), ``index`` (``VideoInfo``, ``DatasetIndex``, ``BadVideo``),
``transcode`` (``bsp-dali transcode``: a one-time short-GOP re-encode), ``demo`` (the built-in
procedural videos, ``demo://class/n``) and ``videogen`` (writing real test and demo videos).

Nothing here imports the later stages. The submodules are imported one by one, not by this package.
"""
