from dataclasses import dataclass, field
from typing import Literal

import pytest

from still_cli.config import resolve, write_resolved
from still_cli.errors import ConfigError


@dataclass
class Cfg:
    output: str = ""
    lr: float = 1e-5
    steps: int = 10
    method: Literal["sft", "dpo"] = "sft"
    use_peft: bool = False
    ks: list[int] = field(default_factory=list)
    note: str | None = None


def test_precedence_defaults_recipe_overrides_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-6\nsteps: 20\nmethod: dpo\n")
    c = resolve(Cfg, recipe=recipe)
    assert (c.lr, c.steps, c.method, c.use_peft) == (1e-6, 20, "dpo", False)
    c = resolve(Cfg, recipe=recipe, overrides=["steps=30", "use_peft=true", "ks=[1,4]"])
    assert (c.steps, c.use_peft, c.ks) == (30, True, [1, 4])
    c = resolve(Cfg, recipe=recipe, overrides=["steps=30"], flags={"steps": 40, "lr": None})
    assert c.steps == 40 and c.lr == 1e-6  # None flags are "not given"


def test_unknown_key_suggests_close_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'stpes'.*did you mean steps"):
        resolve(Cfg, recipe=recipe)
    with pytest.raises(ConfigError, match=r"unknown key 'use_pft' in -o overrides; did you mean use_peft"):
        resolve(Cfg, overrides=["use_pft=true"])


@pytest.mark.parametrize("override, message", [
    ("steps=ten", r"steps = 'ten' is not valid; expected int"),
    ("method=ppo", r"method = 'ppo' is not valid; expected one of 'sft', 'dpo'"),
    ("use_peft=maybe", r"use_peft = 'maybe' is not valid; expected bool"),
    ("lr=fast", r"lr = 'fast' is not valid; expected float"),
    ("ks=[a]", r"ks = 'a' is not valid; expected int"),
])
def test_wrong_type_names_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(Cfg, overrides=[override])


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Cfg, recipe=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(Cfg, recipe=bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        resolve(Cfg, recipe=lst)
    with pytest.raises(ConfigError, match="not key=value"):
        resolve(Cfg, overrides=["steps"])


def test_resolved_config_reproduces_the_run(tmp_path):
    c = resolve(Cfg, overrides=["steps=7", "ks=[2]", "note=hi"])
    path = write_resolved(c, tmp_path)
    assert resolve(Cfg, recipe=path) == c


def test_stage_post_init_errors_name_the_fix():
    from still_cli.stages.eval import EvalConfig

    with pytest.raises(ConfigError, match="add -o"):
        resolve(EvalConfig, flags={"model": "m", "benchmarks": ["aime2024"]})
    with pytest.raises(ConfigError, match=r"k = 8 .* between 1 and n = 4"):
        resolve(EvalConfig, flags={"model": "m", "benchmarks": ["x"], "output": "o", "n": 4, "pass_k": [8]})
