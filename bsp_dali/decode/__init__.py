"""Stage 3, decoding: a batch's plans -> decoded windows (FHWC uint8 stacks of the output size).

``windows`` (which contiguous window of which video each source slot reads: ``DecodeUnit``,
``BatchWindows``), ``stage`` (``DecodeStage``: planning with bans, routing units to readers,
planning ahead, the failure policy), the readers: ``readers`` (the interface, and the CPU reader in
threads), ``procreader`` (PyAV in worker processes with shared memory, the CPU default),
``pyav`` (PyAV window decode and frame readers), ``dali_readers`` (DALI file-list readers and
``fn.decoders.video``), ``pipeline`` (the DALI decode pipeline), ``nvdec`` (NVDEC engines and the
pool of reader pipelines).

Imports the data and plan stages, never synthesis. The submodules are imported one by one, not by
this package (DALI, CuPy and PyAV load only where a reader needs them).
"""
