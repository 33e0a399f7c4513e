"""The task registry: each task's model, streams, loss and validation metric, checked against the
losses of bsp_models written out by hand; and a task added from outside trains through run_worker
unchanged."""

import signal

import pytest
import torch
import torch.nn.functional as F

from bsp_dali.plan.config import SynthesisConfig
from bsp_dali.train.config import TrainConfig
from bsp_dali.train.distributed import Dist
from bsp_dali.train.loop import build_model
from bsp_dali.train.tasks import TASKS, Accuracy, HeatmapError, Task, register
from bsp_models import create_encoder

ONE = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
N, T, S, ACTIONS = 3, 4, 16, 5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A bsp-dali checkpoint of an untrained TSM-R18 encoder (T=4), as distillation reads it."""
    torch.manual_seed(0)
    enc = create_encoder("resnet18", T)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"version": 2, "model": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
                "config": {"model": {"arch": "resnet18", "num_frames": T, "fold_div": 8}}}, path)
    return str(path)


def config(task, teacher=None, **kw):
    extra = {"teacher_vanilla": teacher, "teacher_bsp": teacher} if task == "distill" else {}
    return TrainConfig(task=task, arch="resnet18", synthesis=SynthesisConfig(tau=T // 2, t_range=(1, 3)), **extra, **kw)


def batches(streams, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in streams:
        video = torch.randn(N, 3, T, S, S, generator=g)  # NCTHW float32
        label = torch.randint(0, 4 if s == "bsp" else ACTIONS, (N,), generator=g)
        out[s] = {"video": video, "label": label, "heatmap": torch.rand(N, T, generator=g)}
    return out


def test_the_registry_holds_the_five_tasks_each_declaring_its_streams():
    assert list(TASKS) == ["bsp", "action", "regression", "two-head", "distill"]
    assert {name: t.streams for name, t in TASKS.items()} == {
        "bsp": ("bsp",), "action": ("action",), "regression": ("bsp",), "two-head": ("bsp", "action"),
        "distill": ("action",)}
    assert [name for name, t in TASKS.items() if t.tsm_fc] == ["action"]


def want_loss(task, out, b):
    """The loss of each task, written out from docs/training.md's table."""
    ce = F.cross_entropy
    if task in ("bsp", "action"):
        return ce(out[task]["logits"], b[task]["label"])
    if task == "regression":
        return F.smooth_l1_loss(out["bsp"]["heatmap"], b["bsp"]["heatmap"])
    if task == "two-head":
        return ce(out["action"]["action_logits"], b["action"]["label"]) + \
            ce(out["bsp"]["boundary_logits"], b["bsp"]["label"])
    o = out["action"]
    return ((o["fv"] - o["h1"]) ** 2).sum(1).mean() + ((o["fb"] - o["h2"]) ** 2).sum(1).mean() + \
        ce(o["action_logits"], b["action"]["label"])


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_builds_its_model_and_computes_its_loss(name, teacher):
    task = TASKS[name]
    cfg = config(name, teacher)
    torch.manual_seed(1)
    model = build_model(cfg, task, ACTIONS).eval()  # eval: no dropout, fixed BatchNorm, so both sides agree
    b = batches(task.streams)
    loss = task.loss(model, b)
    with torch.no_grad():
        want = want_loss(name, {s: model(b[s]["video"]) for s in b}, b)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.allclose(loss, want, rtol=1e-5, atol=1e-6)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    if name == "distill":  # the teachers stay frozen
        assert all(not p.requires_grad for p in model.teachers.parameters())


@pytest.mark.parametrize("name, kind, stream, key, classes", [
    ("bsp", Accuracy, "bsp", "logits", 4),
    ("action", Accuracy, "action", "logits", ACTIONS),
    ("regression", HeatmapError, "bsp", None, None),
    ("two-head", Accuracy, "bsp", "boundary_logits", 4),
])
def test_each_task_validates_with_its_metric(name, kind, stream, key, classes, teacher):
    metric = TASKS[name].metric(config(name, teacher), ACTIONS, torch.device("cpu"))
    assert isinstance(metric, kind) and metric.stream == stream
    if kind is Accuracy:
        assert metric.key == key and metric.confusion.shape == (classes, classes)


def test_distillation_has_no_validation_and_needs_its_teachers(teacher):
    assert TASKS["distill"].metric(config("distill", teacher), ACTIONS, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="task distill needs --teacher-vanilla and --teacher-bsp"):
        TrainConfig(task="distill", teacher_vanilla=teacher)


def test_accuracy_counts_a_confusion_matrix():
    m = Accuracy("bsp", "logits", 3, torch.device("cpu"))
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [9.0, 0, 0]])
    m.update({"logits": logits}, {"label": torch.tensor([0, 1, 1, 2])})
    m.update({"logits": logits[:1]}, {"label": torch.tensor([0])})
    m.reduce(ONE)
    r = m.result()
    assert r["confusion"] == [[2, 0, 0], [0, 1, 1], [1, 0, 0]]  # rows: true class, columns: predicted
    assert r["val_clips"] == 5 and r["val_accuracy"] == pytest.approx(3 / 5)


def test_heatmap_error_is_the_mean_smooth_l1():
    m = HeatmapError("bsp", torch.device("cpu"))
    pred, target = torch.tensor([[0.0, 0.5, 3.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    m.update({"heatmap": pred}, {"heatmap": target})
    m.update({"heatmap": pred[:, :1]}, {"heatmap": target[:, :1]})
    m.reduce(ONE)
    # smooth L1 (beta 1): 0, 0.5 * 0.5**2, 3 - 0.5; then 0; over 4 values
    assert m.result()["val_smooth_l1"] == pytest.approx((0.125 + 2.5) / 4)


def test_a_task_registered_from_outside_trains_through_run_worker(tmp_path, kinetics_h264, indexed_h264):
    """The trainer has no list of tasks: a new one is a class and a decorator."""
    from bsp_dali.train.loop import run_worker
    from bsp_models import ClipClassifier

    calls = []

    @register
    class FrozenProbe(Task):
        """A linear probe on a frozen encoder, validated like the pretext."""

        name, help, streams = "frozen-probe", "linear probe", ("bsp",)

        def build(self, cfg, encoder, num_actions):
            for p in encoder.parameters():
                p.requires_grad_(False)
            return ClipClassifier(encoder, cfg.synthesis.num_classes, dropout=0.0)

        def loss(self, forward, batches):
            calls.append(sorted(batches))
            b = batches["bsp"]
            return F.cross_entropy(forward(b["video"])["logits"], b["label"])

        def metric(self, cfg, num_actions, device):
            return Accuracy("bsp", "logits", cfg.synthesis.num_classes, device)

    handler = signal.getsignal(signal.SIGINT)
    try:
        cfg = TrainConfig(data=str(kinetics_h264), out=str(tmp_path / "run"), task="frozen-probe", arch="resnet18",
                          size=32, batch_size=2, epoch_size=4, epochs=1, max_steps=2, gpus=0, threads=1,
                          val_clips=4, val_fraction=0.5,  # of 3 videos a class: 1 to train on, 2 held out
                          synthesis=SynthesisConfig(tau=2, t_range=(1, 3), types=("diff_class", "diff_speed",
                                                                                  "same_speed")))
        summary = run_worker(cfg.to_dict())
    finally:
        del TASKS["frozen-probe"]
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C handling is the caller's again
    assert summary["step"] == 2 and calls == [["bsp"], ["bsp"]]
    assert summary["validation"]["val_clips"] == 4 and len(summary["validation"]["confusion"]) == 3
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["task"] == "frozen-probe" and state["step"] == 2
