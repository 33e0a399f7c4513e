"""One answer to "is there a GPU" (and "is DALI there") for the whole package.

The trainer counts its processes and the iterator resolves ``device="auto"`` with the same
function, ``bsp_dali.gpu.cuda_device_count``: PyTorch's count of visible devices, when CuPy (which
runs the kernel) imports too. PyTorch's count is replaced by a stand-in here: this machine has no
GPU; the real count on a GPU machine is only confirmed there."""

import sys

import pytest

from bsp_dali import gpu
from bsp_dali.gpu import GPUUnavailableError, resolve_device
from bsp_dali.train.config import TrainConfig
from bsp_dali.train.loop import processes_per_node


@pytest.fixture()
def machine(monkeypatch):
    """Set what PyTorch sees and whether CuPy imports; the cached answer is recomputed."""

    def make(torch_devices, cupy):
        monkeypatch.setattr(gpu, "_torch_device_count", lambda: torch_devices)
        real = gpu.importable
        monkeypatch.setattr(gpu, "importable", lambda m: cupy if m == "cupy" else real(m))
        gpu.cuda_device_count.cache_clear()

    yield make
    gpu.cuda_device_count.cache_clear()


@pytest.mark.parametrize("torch_devices, cupy, want", [(8, True, 8), (8, False, 0), (0, True, 0), (0, False, 0)])
def test_the_trainer_and_the_iterator_get_one_answer(machine, torch_devices, cupy, want):
    machine(torch_devices, cupy)
    assert gpu.cuda_device_count() == want
    assert processes_per_node(TrainConfig(nproc=3)) == ((want, True) if want else (3, False))
    assert resolve_device("auto") == ("gpu" if want else "cpu")
    if not want:
        with pytest.raises(GPUUnavailableError, match="CuPy is not installed" if torch_devices else "sees no CUDA"):
            resolve_device("gpu")
        with pytest.raises(ValueError, match=r"--gpus 2 asked for, 0 usable"):
            processes_per_node(TrainConfig(gpus=2))


def test_the_answer_is_asked_once(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu, "_torch_device_count", lambda: calls.append(1) or 0)
    gpu.cuda_device_count.cache_clear()
    try:
        assert [gpu.cuda_device_count() for _ in range(3)] == [0, 0, 0] and len(calls) == 1
    finally:
        gpu.cuda_device_count.cache_clear()


def test_a_module_that_fails_to_import_is_not_available(monkeypatch):
    finder_calls = []

    class Finder:  # a module whose import raises something other than ImportError
        def find_spec(self, name, path=None, target=None):
            if name == "bsp_dali_broken_probe":
                finder_calls.append(name)
                raise RuntimeError("broken install")
            return None

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert gpu.importable("bsp_dali_broken_probe") is False and finder_calls
    assert gpu.importable("json") is True
    assert gpu.dali_available() == gpu.importable("nvidia.dali")


def test_the_decode_stage_asks_the_same_dali_question(monkeypatch, indexed_vp9):
    from bsp_dali import Planner, SynthesisConfig
    from bsp_dali.decode import stage
    from bsp_dali.decode.stage import DecodeStage, StageOptions

    planner = Planner(indexed_vp9, SynthesisConfig())
    monkeypatch.setattr(stage, "dali_available", lambda: False)
    st = DecodeStage(indexed_vp9, planner, StageOptions(size=(16, 16), num_threads=1, cpu_workers="threads"))
    try:
        assert st.decoder == "pyav"
    finally:
        st.close()
    with pytest.raises(GPUUnavailableError, match="DALI is not installed"):
        DecodeStage(indexed_vp9, planner, StageOptions(size=(16, 16), decoder="dali", num_threads=1))
