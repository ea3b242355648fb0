import subprocess
import sys
from pathlib import Path

import pytest

from dgpo.config import DEFAULT_CONFIG, Config, ConfigError, dump_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + [DEFAULT_CONFIG]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert load_config(path, []) == cfg


def test_overrides_and_defaults():
    cfg = load_config("", ["train.lr=1e-4", "dgpo.beta_dpo=10", "sampler.method=euler"])
    assert cfg.train.lr == 1e-4 and cfg.dgpo.beta_dpo == 10.0 and cfg.sampler.method == "euler"
    assert load_config("").dgpo.beta_dpo == 100.0  # official default
    assert load_config(None).run.out_dir == "runs/dgpo-toy"  # embedded toy default


@pytest.mark.parametrize("override, match", [
    ("train.lrr=1", r"unknown key 'train\.lrr'.*allowed.*'lr'"),
    ("bogus.x=1", r"unknown key 'bogus'"),
    ("train.lr=abc", r"train\.lr: expected float"),
    ("train.group_size=1", r"train\.group_size: 1 is out of range \[2, inf\]"),
    ("train.group_size=2.5", r"train\.group_size: expected int"),
    ("sampler.method=heun", r"sampler\.method: 'heun' is not one of \['dpm', 'euler'\]"),
    ("dgpo.clip_dsm=3", r"dgpo\.clip_dsm: expected bool"),
    ("dgpo.clip_range=2", r"dgpo\.clip_range: 2.0 is out of range"),
    ("timesteps.trunc_steps=12", r"timesteps\.trunc_steps=12 must be < sampler\.steps=10"),
    ("timesteps.t_min_end=0.2", r"timesteps\.t_min_end=0\.2 anneals the uniform mode's t_min"),
    ("train", r"key=value"),
])
def test_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("", [override])


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train.: expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=0.001"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(p) == cfg


def test_cli_config_show_and_bad_key_exit_code():
    run = lambda *a: subprocess.run([sys.executable, "-m", "dgpo.cli", *a], capture_output=True, text=True)
    ok = run("config", "show", "train.lr=0.01")
    assert ok.returncode == 0 and "lr: 0.01" in ok.stdout
    bad = run("config", "show", "train.lrr=0.01")
    assert bad.returncode == 2 and "train.lrr" in bad.stderr


def test_options_doc_is_current():
    from dgpo.config.docs import options_markdown

    doc = (ROOT / "docs" / "reference" / "options.md").read_text()
    assert options_markdown() in doc, "regenerate docs/reference/options.md with `dgpo config options`"


@pytest.mark.parametrize("override, match", [
    ("run.time_budget_s=" + "1" * 400, r"run\.time_budget_s: 1111.*\(400 digits\) is too large for a float"),
    ("train.lr=.nan", r"train\.lr: nan is not a finite number"),
    ("run.eval_every_s=1e999", r"run\.eval_every_s: inf is not a finite number"),
    ("run.seed=" + "9" * 5000, r"run\.seed: .*digits"),
    ("run.seed=" + "7" * 400, r"run\.seed: 7777.*\.\.\..* is too large"),
    ("train.prompts_per_epoch=" + "7" * 30, r"train\.prompts_per_epoch: .* is too large \(at most 2\*\*63 - 1\)"),
])
def test_huge_and_non_finite_numbers_get_a_config_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("", [override])
    assert load_config("", [f"run.seed={2**32 - 1}"]).run.seed == 2**32 - 1  # ints stay exact, not via float


def test_non_utf8_config_file_is_named(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"run:\n  out_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"config file .*latin1\.yaml is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("text, match", [
    ("train: {lr: !!python/object/apply:os.system ['touch {marker}']}\n", "not valid YAML: could not determine a "
                                                                          "constructor"),
    ("train: {lr: " + "[" * 5000 + "]" * 5000 + "}\n", "nested more than 64 levels deep"),
    ("reward: {weights: [&a [x], &b [*a, *a, *a], &c [*b, *b, *b], *c]}\n", r"reward\.weights\[0\]: expected float"),
    ("train: {lr: !!bool maybe}\n", r"cannot read a value \(KeyError"),
    ("train: {lr: !!timestamp 2001-13-45}\n", "cannot read a value"),
    ("- run\n- train\n", "expected a mapping of sections"),
    ("{1: 2, a: 3}\n", "unknown key '1'"),
    ("run: {out_dir: !!binary aGVsbG8=}\n", "run.out_dir: expected str, got bytes"),
])
def test_hostile_yaml_is_a_config_error_and_runs_nothing(tmp_path, text, match):
    marker = tmp_path / "EXECUTED"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match=match):
        load_config(bad, ["train.lr=1e-4"])
    assert not marker.exists()


@pytest.mark.parametrize("override, match", [
    ("run.out_dir=a\x00b", "contains a NUL character"), ("run.out_dir=\udcff", "not valid Unicode text"),
    ("train.lr=!!python/name:os.system", r"train\.lr: expected float, got str"),
    ("train.lr=" + "[" * 100 + "]" * 100, "nested more than 64 levels deep"),
])
def test_hostile_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("", [override])


@pytest.mark.parametrize("old,new", [("dgpo.t_min", "timesteps.t_min"), ("dgpo.num_train_timesteps", "timesteps.count"),
                                     ("dgpo.adv_std", "advantages.std"), ("reward.advantages", "advantages.combine"),
                                     ("dgpo.text_dropout", "train.text_dropout")])
def test_a_moved_key_is_an_error_naming_its_new_place(tmp_path, old, new):
    section, key = old.split(".")
    with pytest.raises(ConfigError, match=f"{old} moved to {new}"):
        load_config(None, [f"{old}=0.5"])
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {key}: 0.5\n")
    with pytest.raises(ConfigError, match=f"{old} moved to {new}"):
        load_config(path)
