"""bsp_models: the shift, the encoders, every head and integration, checkpoint layouts."""

import pytest
import torch
import torchvision

from bsp_models import (ClipClassifier, Distill, FrameRegressor, TwoHead, TwoStream, classification_loss,
                        create_encoder, distill_loss, load_imagenet_resnet, load_tsm_checkpoint, regression_loss,
                        temporal_shift, two_head_loss)
from bsp_models.checkpoints import CheckpointError


def shift_reference(x, T, fold_div=8):
    """Frame by frame, channel by channel: the definition of the shift."""
    nt, c, h, w = x.shape
    fold = c // fold_div
    out = torch.zeros_like(x)
    for n in range(nt // T):
        for t in range(T):
            i = n * T + t
            for ch in range(c):
                if ch < fold:
                    out[i, ch] = x[i + 1, ch] if t + 1 < T else 0
                elif ch < 2 * fold:
                    out[i, ch] = x[i - 1, ch] if t > 0 else 0
                else:
                    out[i, ch] = x[i, ch]
    return out


@pytest.mark.parametrize("c, fold_div", [(16, 8), (10, 4), (7, 3)])
def test_shift_matches_reference_forward_and_backward(c, fold_div):
    torch.manual_seed(0)
    x = torch.randn(3 * 4, c, 2, 3, requires_grad=True)
    y = temporal_shift(x, 4, fold_div)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = shift_reference(x2, 4, fold_div)
    assert torch.equal(y, y2)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        temporal_shift(torch.zeros(5, c, 1, 1), 4)


def test_encoder_mixes_time_only_through_the_shift():
    torch.manual_seed(0)
    enc = create_encoder("resnet18", num_frames=4).eval()
    assert sum(1 for m in enc.modules() if type(m).__name__ == "TemporalShift") == 8
    x = torch.randn(2, 3, 4, 32, 32)
    f = enc(x)
    assert f.shape == (2, 4, 512)
    # changing frame 3 changes the features of frame 2 (shifted in), never of clip 1
    x2 = x.clone()
    x2[0, :, 3] += 1
    f2 = enc(x2)
    assert not torch.allclose(f[0, 2], f2[0, 2]) and torch.equal(f[1], f2[1])
    with pytest.raises(ValueError, match="built for 4"):
        enc(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="unknown arch"):
        create_encoder("vgg16")


@pytest.mark.parametrize("arch, dim", [("resnet34", 512), ("resnet50", 2048)])
def test_larger_backbones(arch, dim):
    enc = create_encoder(arch, num_frames=2).eval()
    assert enc(torch.randn(1, 3, 2, 32, 32)).shape == (1, 2, dim)


def batch(n=2, T=4):
    return {"video": torch.randn(n, 3, T, 32, 32), "label": torch.tensor([0, 3][:n]),
            "heatmap": torch.rand(n, T)}


def grads(module):
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_heads_shapes_losses_and_gradients():
    b = batch()
    clf = ClipClassifier(create_encoder("resnet18", 4), 4)
    out = clf(b["video"])
    assert out["logits"].shape == (2, 4) and out["feature"].shape == (2, 512)
    classification_loss(out, b).backward()
    assert "new_fc.weight" in grads(clf) and "encoder.base_model.conv1.weight" in grads(clf)

    reg = FrameRegressor(create_encoder("resnet18", 4))
    out = reg(b["video"])
    assert out["heatmap"].shape == (2, 4)
    regression_loss(out, b).backward()
    assert "new_fc.weight" in grads(reg)

    th = TwoHead(create_encoder("resnet18", 4), num_actions=5)
    ob, oa = th(b["video"]), th(b["video"])
    assert ob["boundary_logits"].shape == (2, 4) and oa["action_logits"].shape == (2, 5)
    two_head_loss(ob, b, oa, {"label": torch.tensor([1, 4])}).backward()
    assert {"action_fc.weight", "boundary_fc.weight", "encoder.base_model.conv1.weight"} <= grads(th)

    ts = TwoStream([create_encoder("resnet18", 4).eval(), create_encoder("resnet18", 4).eval()])
    assert ts(b["video"])["feature"].shape == (2, 1024) and ts.feature_dim == 1024


def test_distillation_trains_the_student_and_leaves_the_teachers_frozen():
    torch.manual_seed(0)
    fv, fb = create_encoder("resnet18", 4), create_encoder("resnet18", 4)
    d = Distill(create_encoder("resnet18", 4), fv, fb, num_actions=3)
    d.train()
    assert not d.teachers.training and d.student.training
    before = {k: v.clone() for k, v in d.teachers.state_dict().items()}
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    b = batch()
    b["label"] = torch.tensor([0, 2])
    out = d(b["video"])
    assert out["h1"].shape == out["fv"].shape == (2, 512)
    loss = distill_loss(out, b)
    loss.backward()
    assert all(p.grad is None for p in d.teachers.parameters())
    assert {"h1.weight", "h2.weight", "classifier.weight", "student.base_model.conv1.weight"} <= grads(d)
    opt.step()
    after = d.teachers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included


def test_loading_torchvision_imagenet_weights(tmp_path):
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    enc = create_encoder("resnet18", 1).eval()
    skipped = load_imagenet_resnet(enc, tmp_path / "r18.pth")
    assert set(skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(enc.base_model.layer2[1].conv1.net.weight, tv.layer2[1].conv1.weight)
    assert torch.equal(enc.base_model.conv1.weight, tv.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_imagenet_resnet(create_encoder("resnet18", 1), tmp_path / "bad.pth")


def test_loading_the_official_tsm_layout(tmp_path):
    torch.manual_seed(2)
    src = ClipClassifier(create_encoder("resnet18", 4), 400).eval()
    state = {f"module.base_model.{k}": v for k, v in src.encoder.base_model.state_dict().items()}
    state.update({f"module.new_fc.{k}": v for k, v in src.new_fc.state_dict().items()})
    assert "module.base_model.layer1.0.conv1.net.weight" in state  # the TSM repository's names
    torch.save({"epoch": 50, "state_dict": state}, tmp_path / "tsm.pth")
    dst = ClipClassifier(create_encoder("resnet18", 4), 400).eval()
    load_tsm_checkpoint(dst, tmp_path / "tsm.pth")
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(src(x)["logits"], dst(x)["logits"])
    other = ClipClassifier(create_encoder("resnet18", 4), 4)
    with pytest.raises(CheckpointError, match="400 classes"):
        load_tsm_checkpoint(other, tmp_path / "tsm.pth")
    load_tsm_checkpoint(other, tmp_path / "tsm.pth", load_fc=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tsm_checkpoint(other, tmp_path / "missing.pth")
