"""Stage 4, synthesis: decoded windows + recipe tables -> the training batch (NCTHW or NTCHW).

``tables`` (the kernel's contract: ``RecipeTables`` and its one builder, ``OutDType``, ``Layout``,
``TableLayout``: the one-buffer upload, normalization, launch geometry), ``synthesis``
(``synthesize``, the backend switch, and ``synthesize_reference``, the NumPy definition of the
kernel), ``kernel_source`` (where ``kernels/bsp_synth.cu`` is), ``kernel_cupy`` (the CuPy launcher),
``kernel_host`` (the CUDA source compiled for the CPU, for tests) and ``torch_interop``
(``torch_view``; on the GPU, the batch in memory from PyTorch's allocator, written on its current
stream).

Imports the plan stage; reads decode windows through their interface only. The submodules are
imported one by one, not by this package.
"""
