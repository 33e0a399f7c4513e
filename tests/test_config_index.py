import json

import pytest

from bsp_dali import BoundaryType, DatasetIndex, SynthesisConfig, VideoInfo
from bsp_dali.plan.config import parse_types


def test_defaults_are_the_documented_ones():
    cfg = SynthesisConfig()
    assert (cfg.tau, cfg.T, cfg.eps_range, cfg.gammas, cfg.stride) == (4, 8, (1, 2), (0.5, 2.0), 1)
    assert cfg.resolved_t_range == (2, 6)
    assert cfg.types == tuple(BoundaryType) and cfg.type_probs == (0.25,) * 4
    assert any(g < 1 for g in cfg.gammas) and any(g > 1 for g in cfg.gammas)


@pytest.mark.parametrize("kwargs, match", [
    ({"tau": 0}, r"tau \(0\)"),
    ({"tau": 2.5}, r"tau \(2.5\)"),
    ({"stride": 0}, r"stride \(0\)"),
    ({"eps_range": (0, 2)}, r"eps_range \(0 2\)"),
    ({"eps_range": (3, 5)}, r"max <= tau \(4\)"),
    ({"gammas": (1.0,)}, r"gamma \(1.0\)"),
    ({"gammas": (-2.0,)}, r"gamma \(-2.0\)"),
    ({"gammas": ()}, "gammas is empty"),
    ({"t_range": (0, 3)}, "t_range"),
    ({"t_range": (2, 8)}, "t_range"),
    ({"types": ()}, "types is empty"),
    ({"types": ("diff_class", "diff_class")}, "twice"),
    ({"types": ("diff_clas",)}, "unknown boundary type 'diff_clas'"),
    ({"probs": (1.0,)}, "one entry per enabled type"),
    ({"probs": (0, 0, 0, 0)}, "positive sum"),
])
def test_impossible_settings_are_refused_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthesisConfig(**kwargs)


@pytest.mark.parametrize("setting, value, needed_by, match", [
    ("eps_range", (9, 9), "diff_class", r"eps_range \(9 9\)"),
    ("gammas", (), "diff_speed", "gammas is empty but diff_speed is enabled"),
    ("gammas", (1.0,), "diff_speed", r"gamma \(1.0\)"),
    ("t_range", (0, 3), "diff_speed", r"t_range \(0 3\)"),
])
def test_settings_only_matter_for_enabled_types(setting, value, needed_by, match):
    """A setting that only one boundary type uses is not checked while that type is off, and is
    refused, naming it and its value, as soon as the type is on."""
    others = [t.key for t in BoundaryType if t.key != needed_by]
    cfg = SynthesisConfig(types=others, **{setting: value})
    assert getattr(cfg, setting) == value and needed_by not in [t.key for t in cfg.types]
    with pytest.raises(ValueError, match=match):
        SynthesisConfig(types=(needed_by,), **{setting: value})
    with pytest.raises(ValueError, match=match):
        SynthesisConfig(types=(*others, needed_by), **{setting: value})


def test_binary_task_is_one_setting_away_and_round_trips():
    cfg = SynthesisConfig(types=parse_types(["same_speed,diff_class"]))
    assert cfg.num_classes == 2 and cfg.label_names == ("diff_class", "same_speed")
    again = SynthesisConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown synthesis setting"):
        SynthesisConfig.from_dict({"tua": 3})


def test_index_from_lists_sorts_classes_and_checks_input(tmp_path):
    idx = DatasetIndex.from_lists(["b/1.mp4", "a/1.mp4", "b/2.mp4"], ["zumba", "abseiling", "zumba"],
                                  [10, 20, 30], fps=[25, 30, 24], sizes=[(320, 240)] * 3, root="/data")
    assert idx.classes == ("abseiling", "zumba")
    assert [v.label for v in idx.videos] == [1, 0, 1]
    assert idx.videos_of_class(1).tolist() == [0, 2]
    assert idx.resolve("b/1.mp4") == "/data/b/1.mp4" and idx.videos[1].fps == 30
    path = tmp_path / "manifest.json"
    idx.save(path)
    back = DatasetIndex.load(path)
    assert back.videos == idx.videos and back.classes == idx.classes and back.root == "/data"
    with pytest.raises(ValueError, match="listed twice"):
        DatasetIndex.from_lists(["a", "a"], ["x", "y"], [3, 3])
    with pytest.raises(ValueError, match="same length"):
        DatasetIndex.from_lists(["a"], ["x", "y"], [3])
    with pytest.raises(ValueError, match="num_frames"):
        VideoInfo("a.mp4", 0, 0)
    with pytest.raises(ValueError, match="has no class name"):
        DatasetIndex([VideoInfo("a.mp4", 3, 10)], ["x"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DatasetIndex.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DatasetIndex.load(tmp_path / "bad.json")


def test_frames_to_decode_counts_from_the_keyframe_before_the_window():
    from bsp_dali.data.index import VideoInfo

    v = VideoInfo("a.mp4", 0, 300, keyframes=((0, 0), (250, 10000)))
    assert v.frames_to_decode(0, 7) == 8
    assert v.frames_to_decode(120, 127) == 128  # decoded from frame 0
    assert v.frames_to_decode(249, 256) == 257  # window straddles the second keyframe
    assert v.frames_to_decode(250, 257) == 8
    assert VideoInfo("b.mp4", 0, 50).frames_to_decode(10, 12) == 13  # no table: from frame 0
    with pytest.raises(ValueError, match="outside"):
        v.frames_to_decode(295, 300)
