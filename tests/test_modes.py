"""Modes are enums (STYLE.md 4): the public boundaries take a member or its name, an unknown name
fails naming the argument and the choices, and what is saved holds plain strings."""

import io

import pytest

from bsp_dali import ClipMode, Decoder
from bsp_dali.data.demo import demo_index
from bsp_dali.data.index import split_train_val
from bsp_dali.data.probe import ProbeMode
from bsp_dali.decode.stage import DecodeStage, StageOptions
from bsp_dali.plan.planner import Planner


def test_modes_parse_their_names_and_refuse_the_rest():
    assert ClipMode.parse("BSP") is ClipMode.BSP and ClipMode.parse(ClipMode.ACTION) is ClipMode.ACTION
    assert Decoder.parse("PyAV") is Decoder.PYAV and ProbeMode.parse("Decode") is ProbeMode.DECODE
    with pytest.raises(ValueError, match=r"unknown mode 'sideways'; expected one of \['bsp', 'action'\]"):
        ClipMode.parse("sideways")
    # "demo" is what a stage decodes the procedural videos with, not a choice
    for bad in ("nvdec", "demo"):
        with pytest.raises(ValueError, match=rf"unknown decoder '{bad}'; expected one of \['auto', 'dali', 'pyav'\]"):
            Decoder.parse(bad)
    # a mode is also its name: tasks key their batches by it, reports print it
    assert ClipMode.BSP == "bsp" and f"{Decoder.PYAV}" == "pyav" and {"action": 1}[ClipMode.ACTION] == 1


def test_stage_and_iterator_take_names_and_refuse_unknown_modes():
    index = demo_index(num_classes=2, size=(16, 16))
    planner = Planner(index, seed=0)
    stage = DecodeStage(index, planner, StageOptions(size=(16, 16), decoder="pyav", num_threads=1), mode="action")
    assert stage.mode is ClipMode.ACTION and stage.decoder is Decoder.DEMO  # demo videos: the demo reader
    assert stage.plan(3, 0) == planner.plan_action(3, 0) != planner.plan(3, 0)  # plain clips
    with pytest.raises(ValueError, match="unknown mode 'boundary'"):
        DecodeStage(index, planner, StageOptions(size=(16, 16)), mode="boundary")
    with pytest.raises(ValueError, match="unknown decoder 'gpu'"):
        DecodeStage(index, planner, StageOptions(size=(16, 16), decoder="gpu"))


def test_iterator_state_saves_the_mode_as_a_plain_string():
    torch = pytest.importorskip("torch")
    from bsp_dali import BSPIterator

    it = BSPIterator(demo_index(num_classes=2, size=(16, 16)), batch_size=2, mode="action", device="cpu",
                     epoch_size=4, num_threads=1)
    assert it.mode is ClipMode.ACTION
    state = it.state_dict()
    assert type(state["mode"]) is str and state["mode"] == "action"
    buf = io.BytesIO()
    torch.save({"loaders": {str(ClipMode.ACTION): state}}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # what a resumed run reads: no enum types allowed
    it.load_state_dict(loaded["loaders"]["action"])
    with pytest.raises(ValueError, match="unknown mode 'vanilla'"):
        BSPIterator(demo_index(num_classes=2), batch_size=2, mode="vanilla", device="cpu")


def test_split_train_val_holds_out_per_class_by_path_not_by_order():
    from bsp_dali.data.index import DatasetIndex

    index = demo_index(num_classes=3, videos_per_class=8)
    train, val = split_train_val(index, 0.25, seed=1)
    assert len(train) + len(val) == len(index) and not {v.path for v in train.videos} & {v.path for v in val.videos}
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # a quarter of each class
    shuffled = DatasetIndex(list(reversed(index.videos)), index.classes)
    assert {v.path for v in split_train_val(shuffled, 0.25, seed=1)[1].videos} == {v.path for v in val.videos}
    assert {v.path for v in split_train_val(index, 0.25, seed=2)[1].videos} != {v.path for v in val.videos}
