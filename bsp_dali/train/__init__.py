"""Stage 6, training (after the iterator, ``bsp_dali.iterator``): ``bsp-dali train``.

``loop`` (``train()`` and ``run_worker``: the training loop, top to bottom), ``config``
(``TrainConfig``: every training setting, declared once with its help text and option), ``tasks``
(the task registry: each task's streams, model, loss and validation metric), ``checkpointer``
(``Checkpointer``: where checkpoints are written, atomically, and how a run resumes) and
``distributed`` (launching processes, each one's rank and device, collectives).

The submodules are imported one by one, not by this package (PyTorch loads where it is used).
"""
