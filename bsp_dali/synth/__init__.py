"""Stage 4, synthesis: decoded windows + recipe tables -> the training batch (NCTHW or NTCHW).

``synthesis`` (``RecipeTables``, ``OutDType``, ``Layout``; ``synthesize``, the backend switch, and
``synthesize_reference``, the NumPy definition of the kernel), ``kernel_source`` (where
``kernels/bsp_synth.cu`` is), ``kernel_cupy`` (the CuPy launcher) and ``kernel_host`` (the CUDA
source compiled for the CPU, for tests).

The submodules are imported one by one, not by this package.
"""
