import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


# ---------------------------------------------------------------------------------- the command line
def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m bsp_dali`` child: this checkout first on its path, then
    whatever the parent had there (packages unpacked beside the system's, as on the GPU machine)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "bsp_dali", *map(str, args)]


def run_cli(*args, timeout: float = 600, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``bsp-dali ARGS`` in a fresh interpreter (as a user would) and return what it did:
    ``returncode``, ``stdout`` and ``stderr`` as text. ``env``: extra environment variables."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, cwd=cwd, env=cli_env(**(env or {})),
                          timeout=timeout)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    from bsp_dali.gpu import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------- generated data
@pytest.fixture(scope="session")
def kinetics_h264(tmp_path_factory):
    """A Kinetics-layout folder of H.264 .mp4 index videos (3 classes x 3 videos)."""
    from bsp_dali.data.videogen import write_kinetics_folder

    root = tmp_path_factory.mktemp("kinetics_h264")
    write_kinetics_folder(root, num_classes=3, per_class=3, codec="h264", frames=(40, 60))
    return root


@pytest.fixture(scope="session")
def kinetics_vp9(tmp_path_factory):
    """A Kinetics-layout folder of VP9 .webm index videos (3 classes x 2 videos)."""
    from bsp_dali.data.videogen import write_kinetics_folder

    root = tmp_path_factory.mktemp("kinetics_vp9")
    write_kinetics_folder(root, num_classes=3, per_class=2, codec="vp9", frames=(40, 60), seed=1)
    return root


def small_kinetics(root: Path, num_classes: int, per_class: int, frames: tuple[int, int], min_frames: int = 8,
                   size: tuple[int, int] = (32, 48)) -> Path:
    """A small indexed Kinetics-layout folder of H.264 videos at ``root`` (for training runs)."""
    from bsp_dali.data.ingest import index_data
    from bsp_dali.data.videogen import write_kinetics_folder

    write_kinetics_folder(root, num_classes=num_classes, per_class=per_class, frames=frames, size=size)
    index_data(root, min_frames=min_frames, workers=1)
    return root


def broken_copy(tmp_path: Path, source: Path):
    """A copy of an indexed folder with two files broken after indexing: videos[1] zeroed (cannot
    be opened), videos[4] with its middle third zeroed (fewer frames than indexed). Returns (index,
    the unopenable video, the damaged one)."""
    import shutil

    from bsp_dali.data.ingest import index_data

    root = tmp_path / "data"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    unopenable, damaged = index.videos[1], index.videos[4]
    (root / unopenable.path).write_bytes(b"\x00" * 5000)
    data = (root / damaged.path).read_bytes()
    n = len(data)
    (root / damaged.path).write_bytes(data[:n // 3] + b"\x00" * (n // 3) + data[2 * n // 3:])
    return index, unopenable, damaged


@pytest.fixture(scope="session")
def indexed_h264(kinetics_h264):
    from bsp_dali.data.ingest import index_data

    return index_data(kinetics_h264, min_frames=8, workers=1).index


@pytest.fixture(scope="session")
def indexed_vp9(kinetics_vp9):
    from bsp_dali.data.ingest import index_data

    return index_data(kinetics_vp9, min_frames=8, workers=1).index


def ffmpeg_frames(path):
    """Every frame of a video decoded by the ffmpeg program (imageio-ffmpeg's binary): a decoder
    independent of PyAV and DALI. Returns (F, H, W, 3) uint8, or None when ffmpeg is missing."""
    import subprocess

    import numpy as np

    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    import av

    with av.open(str(path)) as c:
        w, h = c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height
    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"], capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, h, w, 3)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A bsp-dali checkpoint of a TSM-R18 (T=8) after one training step on small H.264 data."""
    import json

    root = small_kinetics(tmp_path_factory.mktemp("ckpt_data"), num_classes=2, per_class=4, frames=(30, 40))
    out = tmp_path_factory.mktemp("ckpt_run")
    cfg = out / "cfg.json"
    cfg.write_text(json.dumps({"train": {"val_clips": 4, "val_fraction": 0.5}}))
    res = run_cli("train", root, "--out", out, "--arch", "resnet18", "--size", "32", "--batch-size", "2", "--max-steps",
                  "1", "--epochs", "1", "--gpus", "0", "--config", cfg, "--types", "same_speed,diff_speed")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "checkpoints" / "last.pt"
