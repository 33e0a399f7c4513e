"""Command-line options generated from the config dataclasses: one declaration per setting
(``bsp_dali.plan.config.setting``), shared by every command that takes it; only what is written on the
command line overrides a --config file."""

import dataclasses
import enum
import json
from typing import Any, Optional

import typer
import typer.main
from typer.testing import CliRunner

from bsp_dali.cli import OPT_CONFIG, app, config_options
from bsp_dali.plan.config import SynthesisConfig, setting
from bsp_dali.train.config import TrainConfig

runner = CliRunner()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Toy:
    """A config with one setting of each kind the generator knows."""

    count: int = setting(3, flag="--count", help="How many.")
    scale: Optional[float] = setting(None, flag="--scale", help="A factor (default: none).")
    span: tuple[int, int] = setting((1, 2), flag="--span", help="Two values.")
    steps: tuple[float, ...] = setting((0.5,), flag="--step", help="Repeatable.")
    colors: tuple[Color, ...] = setting((Color.RED,), flag="--colors", help="Comma separated.")
    loud: bool = setting(True, flag="--loud/--quiet", help="A switch.")
    fast: bool = setting(False, flag="--fast", help="A flag.")
    hidden: int = setting(7, help="Config files only: no flag, no option.")


def toy_app(seen):
    toy = typer.Typer()

    @toy.command()
    @config_options(toy=Toy)
    def run(name: str = typer.Argument("x"), *, toy: dict[str, Any]) -> None:
        seen.append((name, toy))

    @toy.command()
    def other() -> None:
        pass

    return toy


def test_only_options_written_on_the_command_line_are_passed_on():
    seen = []
    toy = toy_app(seen)
    assert runner.invoke(toy, ["run"]).exit_code == 0
    assert runner.invoke(toy, ["run", "y", "--count", "5", "--scale", "0.5", "--span", "3", "4", "--step", "1",
                               "--step", "2", "--colors", "red,blue", "--colors", "blue", "--quiet", "--fast"]
                         ).exit_code == 0
    assert runner.invoke(toy, ["run", "--count", "3"]).exit_code == 0  # the default value, but written
    assert seen == [("x", {}),
                    ("y", {"count": 5, "scale": 0.5, "span": [3, 4], "steps": [1.0, 2.0],
                           "colors": ["red", "blue", "blue"], "loud": False, "fast": True}),
                    ("x", {"count": 3})]
    assert runner.invoke(toy, ["run", "--hidden", "1"]).exit_code != 0  # no flag: not an option


def params_of(command_app, name):
    return {p.name: p for p in typer.main.get_command(command_app).commands[name].params}


def test_each_option_carries_its_fields_help_and_default():
    params = params_of(toy_app([]), "run")
    want = {"toy__count": (["--count"], 3), "toy__scale": (["--scale"], None), "toy__span": (["--span"], (1, 2)),
            "toy__steps": (["--step"], [0.5]), "toy__colors": (["--colors"], ["red"]),
            "toy__loud": (["--loud"], True), "toy__fast": (["--fast"], False)}
    for name, (opts, default) in want.items():
        field = name.split("__")[1]
        assert params[name].opts == opts and params[name].default == default, name
        assert params[name].help == {f.name: f for f in dataclasses.fields(Toy)}[field].metadata["help"]
    assert params["toy__loud"].secondary_opts == ["--quiet"]
    assert set(params) == set(want) | {"name"}


def flagged(cls):
    return {f.metadata["flag"].split("/")[0]: f.metadata["help"] for f in dataclasses.fields(cls)
            if f.metadata.get("flag")}


def test_every_synthesis_setting_is_one_option_of_preview_plan_and_train_declared_once():
    want = flagged(SynthesisConfig)
    assert set(want) == {"--tau", "--eps", "--gamma", "--t-range", "--stride", "--types", "--probs"}
    for command in ("preview", "plan", "train"):
        got = {p.opts[0]: p.help for p in params_of(app, command).values() if p.name.startswith("synthesis__")}
        assert got == want, command


def test_every_train_setting_with_a_flag_is_an_option_of_train():
    want = flagged(TrainConfig)
    got = {p.opts[0]: p.help for p in params_of(app, "train").values() if p.name.startswith("train__")}
    assert got == want
    assert {"--out", "--task", "--gpus", "--nproc", "--max-steps", "--resume", "--trust-checkpoint",
            "--deterministic"} <= set(got)
    # extract and inspect share train's --trust-checkpoint declaration
    for command in ("extract", "inspect"):
        (trust,) = [p for p in params_of(app, command).values() if p.opts == ["--trust-checkpoint"]]
        assert trust.help == want["--trust-checkpoint"]


def test_config_file_settings_hold_unless_an_option_is_written(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"epochs": 0}}))
    res = runner.invoke(app, ["train", str(tmp_path), "--config", str(cfg)])
    assert res.exit_code == 2 and "epochs (0) must be >= 1" in res.output  # from the file, no default over it
    res = runner.invoke(app, ["train", str(tmp_path), "--config", str(cfg), "--epochs", "1", "--batch-size", "0"])
    assert res.exit_code == 2 and "--batch-size (0) must be >= 1" in res.output  # the option wins over the file


def test_config_option_is_shared():
    assert all(any(p.opts == ["--config"] for p in params_of(app, c).values()) for c in ("preview", "plan", "train"))
    assert OPT_CONFIG.help.startswith("JSON file of settings")
