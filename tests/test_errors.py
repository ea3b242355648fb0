"""Input mistakes end in one line and exit status 2 (``--debug``: with the traceback); our bugs keep
their traceback. Loaders refuse damaged files before anything is built, and never run code from them."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from dgpo.cli import main
from dgpo.errors import CheckpointError, InputError, MissingPathError, UserError, one_line, short, user_path


def _one_line_error(capsys, argv, cmd):
    """Exit 2; stderr ends with the one error line (a progress bar may come before it), no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    assert rc == 2 and last.startswith(f"dgpo {cmd}: error: ") and "Traceback" not in err, err
    assert err.count("error:") == 1, err
    return last


def test_config_mistake_is_one_line_and_debug_adds_the_traceback(capsys):
    line = _one_line_error(capsys, ["config", "show", "train.lrr=1"], "config")
    assert "unknown key 'train.lrr'" in line and "allowed under train." in line
    for argv in (["--debug", "config", "show", "train.lrr=1"], ["config", "show", "train.lrr=1", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("Traceback") and "ConfigError" in err[-2] and err[-1].startswith("dgpo config: error:")


def test_bad_command_line_is_one_line(capsys):
    for argv, what in ((["sample", "--steps", "0"], "--steps: 0 is out of range [1, 1000]"),
                       (["eval", "--cfg-scale", "nan"], "--cfg-scale: 'nan' must be a finite number"),
                       (["config", "show", "--bogus"], "unrecognized arguments: --bogus"),
                       (["sample", "--out", "no_such_dir/grid"], "'no_such_dir/grid' is not an image file name")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and len(err) == 1 and what in err[0] and "--help" in err[0], err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import dgpo.cli

    def buggy(a):
        raise ValueError("an internal invariant broke")  # a ValueError of ours, not a UserError

    monkeypatch.setattr(dgpo.cli, "cmd_config", buggy)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["config", "show"])
    script = ("import sys, dgpo.cli\n"
              "def buggy(a): raise KeyError('bug')\n"
              "dgpo.cli.cmd_config = buggy\n"
              "sys.exit(dgpo.cli.main(['config', 'show']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" in run.stderr and "KeyError: 'bug'" in run.stderr


def test_prompt_model_and_run_mistakes_through_the_cli(capsys, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a red circle", "include": [{"class": "circle", "count": 1}]}\n'
                   '{"prompt": "two squares", "include": [{"class": "square", "count": "2"}]}\n')
    line = _one_line_error(capsys, ["eval", "--model", "oracle", "--split", str(bad)], "eval")
    assert "p.jsonl:2:" in line and "integer 'count' >= 1" in line
    line = _one_line_error(capsys, ["sample", "--model", str(tmp_path / "nope")], "sample")
    assert "nope" in line and "not a run directory, toy checkpoint folder or diffusers folder" in line
    line = _one_line_error(capsys, ["export", str(tmp_path / "norun")], "export")
    assert "is not a run directory (no config.yaml)" in line
    line = _one_line_error(capsys, ["train", "--resume", f"run.out_dir={tmp_path / 'fresh'}"], "train")
    assert "--resume: no checkpoint under" in line and "train without --resume" in line
    (tmp_path / "afile").write_text("")
    line = _one_line_error(capsys, ["train", f"run.out_dir={tmp_path / 'afile'}"], "train")
    assert "is a file, not a folder" in line
    oracle = tmp_path / "o.jsonl"
    oracle.write_text('{"prompt": "a dog", "include": [{"class": "dog", "count": 1}]}\n')
    line = _one_line_error(capsys, ["eval", "--model", "oracle", "--split", str(oracle)], "eval")
    assert "cannot draw 'a dog'" in line


def test_corrupt_checkpoint_resume_is_one_line(tiny_toy, tmp_path, capsys):
    from dgpo.config import load_config
    from dgpo.training.trainer import Trainer

    args = [f"model.path={tiny_toy}", f"run.out_dir={tmp_path / 'run'}", "run.log_with=none", "train.lora_rank=4",
            "train.lora_alpha=8", "reward.name=jpeg_incompressibility", "eval.max_prompts=4"]
    tr = Trainer(load_config(None, args))
    tr._save(1)
    policy = tmp_path / "run" / "checkpoints" / "step_000000" / "policy.safetensors"
    policy.write_bytes(policy.read_bytes()[:100])  # truncated
    line = _one_line_error(capsys, ["train", "--resume", *args], "train")
    assert "--resume: no checkpoint" in line and "step_000000" in line and "policy.safetensors" in line


def _policy_and_opt(tiny_toy):
    from dgpo.models.toy import ToyFlowModel
    from dgpo.training.policy import Policy

    policy = Policy(ToyFlowModel.load(tiny_toy), lora_rank=4, lora_alpha=8)
    opt = torch.optim.AdamW(policy.params, lr=1e-3)
    for p in policy.params:
        p.grad = torch.randn_like(p)
    opt.step()
    return policy, opt


@pytest.mark.parametrize("damage, match", [
    ("shape", r"has shape \(.*\), the model's"), ("dtype", "holds torch.int64, not floats"),
    ("moment_shape", "does not fit its shape"), ("lr", "param_groups lr='fast'"),
    ("state", "'step' must be an integer"),
    ("json", "optimizer.json: not readable JSON"),
])
def test_checkpoint_damage_is_refused_before_anything_loads(tiny_toy, tmp_path, damage, match):
    from dgpo.training import checkpoints

    policy, opt = _policy_and_opt(tiny_toy)
    path = tmp_path / "ckpt"
    checkpoints.save_checkpoint(path, {"policy": policy.state_dict()}, opt, {"step": 1, "epoch": 1, "evals": []})
    before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    if damage in ("shape", "dtype"):
        t = load_file(str(path / "policy.safetensors"))
        k = sorted(t)[0]
        t[k] = t[k].T.contiguous() if damage == "shape" else t[k].long()
        save_file(t, str(path / "policy.safetensors"))
    elif damage == "moment_shape":
        t = load_file(str(path / "optimizer.safetensors"))
        t["0.exp_avg"] = torch.zeros(3)
        save_file(t, str(path / "optimizer.safetensors"))
    elif damage == "lr":
        meta = json.loads((path / "optimizer.json").read_text())
        meta["param_groups"][0]["lr"] = "fast"
        (path / "optimizer.json").write_text(json.dumps(meta))
    elif damage == "state":
        (path / "state.json").write_text(json.dumps({"epoch": 1, "evals": []}))
    else:
        (path / "optimizer.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match=match):
        parts, _ = checkpoints.load_checkpoint(path, ["policy"], opt)
        policy.load_state_dict(parts["policy"])
    after = opt.state_dict()["state"][0]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the optimizer was not touched


def test_toy_folder_checks_come_before_allocation(tiny_toy, tmp_path):
    from dgpo.toy.weights import load_toy

    cfg = json.loads((tiny_toy / "config.json").read_text())
    for bad, match in (({"channels": [1 << 20] * 3}, r"model.channels=.* must be 3 multiples of 8"),
                       ({"heads": 3}, "model.heads must divide"), ({"image_size": True}, "image_size=True"),
                       ({"depth": 9}, "unknown key model.'depth'"), ({"text_dim": 32}, "weights do not match")):
        (tiny_toy / "config.json").write_text(json.dumps({"model": {**cfg["model"], **bad}}))
        with pytest.raises(InputError, match=match):
            load_toy(tiny_toy)
    (tiny_toy / "config.json").write_text(json.dumps(cfg))
    t = load_file(str(tiny_toy / "model.safetensors"))
    save_file({**t, "stem.weight": t["stem.weight"].to(torch.int32)}, str(tiny_toy / "model.safetensors"))
    with pytest.raises(InputError, match="stem.weight holds I32 values, not floats"):
        load_toy(tiny_toy)


def test_lora_loading_never_unpickles(tiny_toy, tmp_path):
    from dgpo.models.loading import apply_lora
    from dgpo.training.export import load_any

    marker = tmp_path / "RAN"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["to_q"]}))
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(InputError, match="adapter_model.safetensors"):
        apply_lora(load_any(str(tiny_toy)), str(folder))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 10**9, "target_modules": "x"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=r"r \(and rank_pattern\) must be integers in \[1, 4096\]"):
        apply_lora(load_any(str(tiny_toy)), str(folder))
    assert not marker.exists()


def test_error_helpers():
    loop = []
    loop.append(loop)
    assert short(loop) == "[[[[...]]]]" and short(10**5000).startswith("<an integer of")
    assert len(short("x" * 10_000)) < 100
    assert one_line("a\n  b\n\nc") == "a b c" and len(one_line("y" * 10_000)) <= 2000
    with pytest.raises(InputError, match="NUL"):
        user_path("a\x00b", "--model")
    assert issubclass(CheckpointError, ValueError) and issubclass(MissingPathError, FileNotFoundError)
    assert all(issubclass(c, UserError) for c in (CheckpointError, InputError, MissingPathError))


def test_the_file_system_refusing_a_path_is_one_line(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    line = _one_line_error(capsys, ["toy", "prompts", "test", "--out", str(tmp_path / "afile" / "p.jsonl")], "toy")
    assert "afile" in line and "check the path and its permissions" in line


def test_pretrain_command_line_mistakes_are_one_line(capsys, tiny_toy, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["toy", "pretrain", "--channels", "16,30,64"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--channels: expected three multiples of 8" in err
    line = _one_line_error(capsys, ["toy", "pretrain", "--init", str(tiny_toy), "--coords"], "toy")
    assert "--coords and --channels shape a new model" in line
    line = _one_line_error(capsys, ["toy", "pretrain", "--out", str(tmp_path / "none"), "--resume"], "toy")
    assert "--resume: no checkpoint under" in line and "without --resume" in line
