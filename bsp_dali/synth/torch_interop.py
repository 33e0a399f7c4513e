"""PyTorch's side of a synthesized batch: zero-copy views, and on the GPU a batch PyTorch owns.

* :func:`torch_view`: a PyTorch tensor over a NumPy or CuPy batch, without a copy.
* :class:`GPUSynthesis`: the iterator's synthesis on the GPU. The batch is a tensor from
  ``torch.empty``, so PyTorch's caching allocator serves it like any other activation, and the
  kernel writes into it (``synthesize_cupy(out=...)``) on PyTorch's current stream of the calling
  thread (CuPy is pointed at that stream with ``cupy.cuda.ExternalStream``). So the batch is ready
  for whatever the consumer queues next on that stream, and a consumer that reads it on another
  stream uses PyTorch's own rule: ``tensor.record_stream(side_stream)`` (PyTorch then keeps the
  memory from reuse until that stream's work is done).
* :class:`TorchStaging`: the kernel's per-batch operands through PyTorch's allocators: packed in a
  pinned host buffer, copied to a device buffer in one non-blocking copy on the current stream
  (PyTorch's pinned allocator keeps the host block from reuse until that copy has run; the device
  block is reused only by later work of the same stream); ``mean`` and ``1/std`` uploaded once.

PyTorch and CuPy are imported where used, never with the package.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from ..gpu import import_cupy
from .tables import Layout, OutDType, RecipeTables

TORCH_DTYPES = {OutDType.FLOAT32: "float32", OutDType.FLOAT16: "float16", OutDType.BFLOAT16: "bfloat16",
                OutDType.UINT8: "uint8"}
MAX_HELD_BATCHES = 8  # batches whose input stacks wait for their kernel; beyond, wait for the oldest


def torch_view(array: Any, dtype: OutDType | str = OutDType.FLOAT32) -> Any:
    """Zero-copy PyTorch tensor of a synthesized batch (NumPy or CuPy); bfloat16 batches travel as
    uint16 bit patterns and come back as ``torch.bfloat16``."""
    import torch

    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)
    if OutDType.parse(dtype) is OutDType.BFLOAT16:
        t = t.view(torch.bfloat16)
    return t


def cupy_view(tensor: Any, storage: np.dtype | type) -> Any:
    """A CuPy array over a contiguous CUDA tensor's memory, of dtype ``storage`` (same item size),
    that keeps the tensor alive (CuPy's ``UnownedMemory`` holds it as the owner)."""
    cp = import_cupy()
    storage = np.dtype(storage)
    if not tensor.is_cuda or not tensor.is_contiguous() or tensor.element_size() != storage.itemsize:
        raise ValueError(f"cupy_view needs a contiguous CUDA tensor of {storage.itemsize}-byte elements, got "
                         f"{tensor.dtype} on {tensor.device}")
    nbytes = tensor.numel() * tensor.element_size()
    mem = cp.cuda.UnownedMemory(tensor.data_ptr(), nbytes, tensor, tensor.device.index)
    return cp.ndarray(tuple(tensor.shape), dtype=storage, memptr=cp.cuda.MemoryPointer(mem, 0))


class TorchStaging:
    """A :class:`~bsp_dali.synth.kernel_cupy.Staging` through PyTorch's allocators, for one device
    (see the module docstring)."""

    def __init__(self, device: Any):
        self.device = device  # a torch.device("cuda", i)
        self._constants: dict[bytes, tuple[Any, Any]] = {}
        self.uploads = 0  # host-to-device copies of tables (one per batch)

    def upload(self, nbytes: int, fill: Any) -> Any:
        import torch

        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        fill(host.numpy())
        dev = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        dev.copy_(host, non_blocking=True)  # on the current stream, which CuPy launches on too
        self.uploads += 1
        return cupy_view(dev, np.uint8)

    def constants(self, values: np.ndarray) -> Any:
        import torch

        values = np.ascontiguousarray(values, dtype=np.float32)
        key = values.tobytes()
        if key not in self._constants:
            t = torch.from_numpy(values.copy()).to(self.device)
            torch.cuda.current_stream(self.device).synchronize()  # readable from any stream from now on
            self._constants[key] = (t, cupy_view(t, np.float32))
        return self._constants[key][1]


class GPUSynthesis:
    """Synthesis of the iterator's batches on one GPU into tensors PyTorch owns (see the module
    docstring). ``__call__(stacks, tables)`` returns ``(tensor, view)``: the batch as a tensor of
    the output dtype (``torch.bfloat16`` for bfloat16) and as a CuPy view of it (storage dtype).

    It keeps each batch's input stacks alive until the kernel that reads them has run: a stack that
    a DALI reader pipeline allocated on its own stream goes back to CuPy's pool for that stream when
    freed, and the pool would hand it to the pipeline's next copy without waiting for PyTorch's
    stream, where the kernel may still be reading it."""

    def __init__(self, device_id: int, *, mean: Any = None, std: Any = None,
                 dtype: OutDType | str = OutDType.FLOAT32, layout: Layout | str = Layout.NCTHW):
        import torch

        self.device = torch.device("cuda", int(device_id))
        self.mean, self.std = mean, std
        self.dtype, self.layout = OutDType.parse(dtype), Layout.parse(layout)
        self.staging = TorchStaging(self.device)
        self._held: collections.deque[tuple[Any, list[Any]]] = collections.deque()

    def __call__(self, stacks: Sequence[Any], tables: RecipeTables) -> tuple[Any, Any]:
        import torch

        from .kernel_cupy import synthesize_cupy

        cp = import_cupy()
        idx = self.device.index
        stream = torch.cuda.current_stream(self.device)
        with cp.cuda.Device(idx), cp.cuda.ExternalStream(stream.cuda_stream, idx):
            # host-decoded stacks (PyAV): one upload each, on this stream; DALI's are on the device
            sources = [cp.asarray(s) if isinstance(s, np.ndarray) else s for s in stacks]
            H, W, C = tables.validate([tuple(s.shape) for s in sources])
            out = torch.empty(self.layout.shape(tables.N, tables.T, H, W, C),
                              dtype=getattr(torch, TORCH_DTYPES[self.dtype]), device=self.device)
            view = cupy_view(out, self.dtype.storage)
            synthesize_cupy(sources, tables, mean=self.mean, std=self.std, dtype=self.dtype, layout=self.layout,
                            out=view, staging=self.staging)
        self._hold(stream, sources)
        return out, view

    def _hold(self, stream: Any, sources: list[Any]) -> None:
        import torch

        done = torch.cuda.Event()
        done.record(stream)
        self._held.append((done, sources))
        while self._held and (self._held[0][0].query() or len(self._held) > MAX_HELD_BATCHES):
            self._held[0][0].synchronize()  # at once when query() said so; else the oldest of too many
            self._held.popleft()

    def close(self) -> None:
        """Wait for the kernels still reading held stacks, then let the stacks go."""
        while self._held:
            self._held.popleft()[0].synchronize()


__all__ = ["GPUSynthesis", "TORCH_DTYPES", "TorchStaging", "cupy_view", "torch_view"]
