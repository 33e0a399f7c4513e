import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


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
    import os
    import subprocess
    import sys

    from bsp_dali.data.ingest import index_data
    from bsp_dali.data.videogen import write_kinetics_folder

    root = tmp_path_factory.mktemp("ckpt_data")
    write_kinetics_folder(root, num_classes=2, per_class=4, frames=(30, 40), size=(32, 48))
    index_data(root, min_frames=8, workers=1)
    out = tmp_path_factory.mktemp("ckpt_run")
    cfg = out / "cfg.json"
    cfg.write_text(json.dumps({"train": {"val_clips": 4, "val_fraction": 0.5}}))
    res = subprocess.run([sys.executable, "-m", "bsp_dali", "train", str(root), "--out", str(out), "--arch", "resnet18",
                          "--size", "32", "--batch-size", "2", "--max-steps", "1", "--epochs", "1", "--gpus", "0",
                          "--config", str(cfg), "--types", "same_speed,diff_speed"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "checkpoints" / "last.pt"
