"""The CPU crop/resize/flip against an independent implementation (torchvision)."""

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from bsp_dali.plan.augment import SpatialConfig, apply_cpu, draw


def frames(seed: int, F: int = 3, H: int = 72, W: int = 96) -> np.ndarray:
    """Smooth colour gradients plus sharp edges and fine noise: resampling errors show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.empty((F, H, W, 3), np.uint8)
    for f in range(F):
        img = 120 + 60 * np.sin(xx[..., None] / (5 + f) + yy[..., None] / 7 + np.arange(3))
        img += 50 * ((xx // 9 + yy // 11 + f) % 2)[..., None]
        img += rng.normal(0, 12, (H, W, 3))
        out[f] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_resized_crop_and_flip_match_torchvision(seed):
    stack = frames(seed)
    F, H, W, _ = stack.shape
    size = (40, 56)  # upscale in some draws, downscale (antialiased) in others
    box, flip = draw(np.random.default_rng(seed), SpatialConfig(size=size, scale=(0.1, 1.0)), W, H)
    # torchvision crops whole pixels: snap the drawn box to the pixel grid, give both the same box
    top, left = round(box[0] * H), round(box[1] * W)
    height, width = max(1, round(box[2] * H) - top), max(1, round(box[3] * W) - left)
    snapped = (top / H, left / W, (top + height) / H, (left + width) / W)
    got = apply_cpu(stack, snapped, flip, size).astype(int)
    t = torch.from_numpy(stack).permute(0, 3, 1, 2)  # FHWC -> FCHW
    ref = TF.resized_crop(t, top, left, height, width, list(size), interpolation=InterpolationMode.BILINEAR,
                          antialias=True)
    if flip:
        ref = TF.hflip(ref)
    ref = ref.permute(0, 2, 3, 1).numpy().astype(int)
    assert got.shape == ref.shape == (F, *size, 3)
    diff = np.abs(got - ref)
    # inside, the same filter on the same pixels: rounding apart, equal. At the edges Pillow's
    # filter reads the pixels just outside the box where torchvision (crop first) repeats the edge
    inner = diff[:, 2:-2, 2:-2]
    assert inner.mean() < 0.1 and inner.max() <= 1, (inner.mean(), inner.max())
    assert diff.mean() < 1.0, diff.mean()
    # and the comparison is sensitive: the other flip is far off
    other = apply_cpu(stack, snapped, not flip, size).astype(int)
    assert np.abs(other - ref).mean() > 10


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_single_threaded_rgb_conversion_gives_the_default_conversions_pixels(tmp_path, codec):
    """The decode workers convert to rgb24 with swscale on their own thread (PyAV's default starts
    a thread pool per call): the pixels must be those of the default conversion."""
    import av

    from bsp_dali.data.videogen import write_kinetics_folder
    from bsp_dali.plan.augment import rgb24

    write_kinetics_folder(tmp_path, num_classes=1, per_class=1, codec=codec, frames=(12, 12), size=(70, 98))
    path = next(p for p in tmp_path.rglob("*") if p.suffix in (".mp4", ".webm"))
    n = 0
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.video[0]):
            np.testing.assert_array_equal(rgb24(frame).to_ndarray(), frame.to_ndarray(format="rgb24"))
            n += 1
    assert n == 12
