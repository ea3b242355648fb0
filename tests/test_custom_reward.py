"""A user's own reward: ``reward.name: "package.module:function"`` and plain Python callables."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from dgpo.errors import InputError, UserError
from dgpo.evaluation import reward_scorer
from dgpo.rewards import build_reward, build_reward_from_config
from dgpo.rewards.custom import (
    CustomReward,
    RewardOutputError,
    as_reward,
    is_custom_name,
    load_reward,
    resolve,
    spec_of,
)
from dgpo.rewards.multi import MultiReward, score_parts
from dgpo.rewards.retry import Backoff, GuardedCall

IMAGES = torch.rand(4, 3, 8, 8)
METAS = [{"prompt": p} for p in ("a red square", "a blue circle", "two cats", "a dog")]

MODULE = '''
import torch

NOT_CALLABLE = 3.0


def brightness(images, metas):
    return images.mean(dim=(1, 2, 3))


def as_list(images, metas):
    return [float(len(m["prompt"])) for m in metas]


class Scorer:
    def __init__(self, device="cpu", scale=2.0):
        self.device, self.scale = device, scale

    def __call__(self, images, metas):
        return self.scale * images.mean(dim=(1, 2, 3))

    class Nested:
        @staticmethod
        def score(images, metas):
            return torch.zeros(len(images))


class NeedsArgs:
    def __init__(self, weights_path):
        pass

    def __call__(self, images, metas):
        return torch.zeros(len(images))


class Strict:
    version = "strict-v1"

    def details(self, images, metas):
        r = images.mean(dim=(1, 2, 3))
        return r, (r > 0.5).float()

    def __call__(self, images, metas):
        return self.details(images, metas)[0]

    def eval_scores(self, images, metas):
        return [(1.0, 0.5)] * len(images)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``my_rewards_<n>`` of the test's own, importable from sys.path; its name."""
    name = f"my_rewards_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_custom_names_are_module_colon_attribute():
    assert is_custom_name("pkg.mod:fn") and is_custom_name("mod:Cls.method") and is_custom_name("_m:_f")
    for name in ("toy_geneval", "pkg.mod.fn", "pkg.mod:", ":fn", "pkg..mod:fn", "pkg.mod:fn()", "a b:c", 3, None):
        assert not is_custom_name(name)


def test_module_function_resolves_and_scores(user_module):
    fn = load_reward(f"{user_module}:brightness")
    assert isinstance(fn, CustomReward) and fn.version == f"{user_module}:brightness"
    torch.testing.assert_close(fn(IMAGES, METAS), IMAGES.mean(dim=(1, 2, 3)))
    # a list of numbers is one score per image too; the result is a float32 CPU tensor
    out = load_reward(f"{user_module}:as_list")(IMAGES, METAS)
    assert out.dtype == torch.float32 and out.tolist() == [12.0, 13.0, 8.0, 5.0]
    # a nested attribute path
    assert load_reward(f"{user_module}:Scorer.Nested.score")(IMAGES, METAS).tolist() == [0.0] * 4


def test_a_class_is_instantiated_with_the_device(user_module):
    fn = load_reward(f"{user_module}:Scorer", device="cpu")
    assert fn.fn.device == "cpu"
    torch.testing.assert_close(fn(IMAGES, METAS), 2.0 * IMAGES.mean(dim=(1, 2, 3)))
    with pytest.raises(InputError, match=r"reward.name: .*NeedsArgs.*needs \['weights_path'\]"):
        load_reward(f"{user_module}:NeedsArgs")


def test_resolution_errors_name_the_key(user_module):
    with pytest.raises(InputError, match=r"reward.name\[1\]: 'no_such_module_xyz:fn': there is no module "
                                         r"'no_such_module_xyz'.*PYTHONPATH"):
        resolve("no_such_module_xyz:fn", key="reward.name[1]")
    with pytest.raises(InputError, match=r"there is no module 'no_such_module_xyz'"):
        resolve("no_such_module_xyz.sub:fn")
    with pytest.raises(InputError, match=rf"reward.name: '{user_module}:nothing': {user_module} has no attribute "
                                         "'nothing'"):
        resolve(f"{user_module}:nothing")
    with pytest.raises(InputError, match=r"Scorer has no attribute 'missing'"):
        resolve(f"{user_module}:Scorer.missing")
    with pytest.raises(InputError, match=r"reward.name: .*NOT_CALLABLE' is a float, not a callable"):
        resolve(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(InputError, match="neither a built-in reward nor of the form 'package.module:function'"):
        resolve("not a name")
    # all of them user errors (one line from the CLI), and still ValueErrors
    with pytest.raises(UserError):
        resolve(f"{user_module}:nothing")


def test_a_module_that_fails_to_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken_dep_rewards.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "syntax_rewards.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="importing 'broken_dep_rewards' failed: No module named "
                                         "'no_such_dependency_xyz'"):
        resolve("broken_dep_rewards:f")
    with pytest.raises(InputError, match="importing 'syntax_rewards' failed: SyntaxError"):
        resolve("syntax_rewards:f")


def test_build_reward_takes_names_and_callables(user_module):
    fn = build_reward(f"{user_module}:brightness")
    assert isinstance(fn, CustomReward)
    mine = build_reward(lambda images, metas: torch.ones(len(images)))
    assert mine(IMAGES, METAS).tolist() == [1.0] * 4
    with pytest.raises(InputError, match="unknown reward 'nope'.*'package.module:function'"):
        build_reward("nope")
    with pytest.raises(InputError, match=r"reward.name\[0\]: .*has no attribute 'nothing'"):
        build_reward(f"{user_module}:nothing", key="reward.name[0]")


def _rc(name, weights=()):
    """A RewardConfig as the config builds it (every field at its default but these)."""
    from dgpo.config import RewardConfig

    return RewardConfig(name=name, weights=list(weights), token_env="DGPO_TEST_NO_TOKEN", timeout_s=1.0, retries=0,
                        backoff_s=0.0, max_backoff_s=0.0)


def test_config_names_mix_user_and_built_in_rewards(user_module):
    mine = f"{user_module}:brightness"
    assert isinstance(build_reward_from_config(_rc(mine)), CustomReward)
    multi = build_reward_from_config(_rc(["jpeg_incompressibility", mine], [0.5, 2.0]))
    assert isinstance(multi, MultiReward) and list(multi.parts) == ["jpeg_incompressibility", mine]
    total, parts, correct = score_parts(multi, IMAGES, METAS)
    torch.testing.assert_close(parts[mine], IMAGES.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(total, 0.5 * parts["jpeg_incompressibility"] + 2.0 * parts[mine])
    assert correct is None
    with pytest.raises(InputError, match=r"reward.name\[1\]: .*has no attribute 'nothing'"):
        build_reward_from_config(_rc(["jpeg_incompressibility", f"{user_module}:nothing"]))


def test_config_builder_takes_a_python_reward_instead_of_the_name():
    def my_reward(images, metas):
        return images.mean(dim=(1, 2, 3))

    fn = build_reward_from_config(_rc("toy_geneval"), reward=my_reward)
    assert isinstance(fn, CustomReward) and fn.name == my_reward.__qualname__
    torch.testing.assert_close(fn(IMAGES, METAS), IMAGES.mean(dim=(1, 2, 3)))
    multi = MultiReward({"a": as_reward(my_reward)}, {"a": 1.0})
    assert build_reward_from_config(_rc("toy_geneval"), reward=multi) is multi  # passed through
    assert as_reward(fn) is fn


@pytest.mark.parametrize("out, match", [
    (None, r"returned NoneType None; expected one score per image: a tensor of shape \[4\]"),
    (0.5, r"returned float 0.5"),
    ({"score": 1.0}, r"returned dict"),
    ("1.0", r"returned str"),
    (torch.zeros(4, 1), r"returned shape \[4, 1\] for 4 images \(.squeeze\(-1\) it\)"),
    (torch.zeros(3), r"returned shape \[3\] for 4 images"),
    (torch.tensor(1.0), r"returned shape \[\] for 4 images"),
    (torch.zeros(4, dtype=torch.complex64), r"returned a tensor of torch.complex64"),
    (["a", "b", "c", "d"], r"returned list .*not numbers"),
    (np.zeros((2, 2)), r"returned shape \[2, 2\] for 4 images"),
])
def test_the_wrapper_checks_what_the_function_returns(out, match):
    fn = as_reward(lambda images, metas: out, name="mine")
    with pytest.raises(RewardOutputError, match=match) as e:
        fn(IMAGES, METAS)
    assert "reward 'mine'" in str(e.value)
    assert isinstance(e.value, InputError) and e.value.permanent  # the trainer's retries stop at once


@pytest.mark.parametrize("out", [torch.arange(4), torch.ones(4, dtype=torch.bool), np.arange(4.0),
                                 (1, 2, 3, 4), torch.rand(4, dtype=torch.float64, requires_grad=True)])
def test_the_wrapper_accepts_any_real_vector_of_b_scores(out):
    got = as_reward(lambda images, metas: out)(IMAGES, METAS)
    assert got.shape == (4,) and got.dtype == torch.float32 and got.device.type == "cpu" and not got.requires_grad


def test_a_wrong_output_is_not_retried_by_the_trainers_guard():
    calls = []

    def bad(images, metas):
        calls.append(1)
        return torch.zeros(len(images), 2)

    guard = GuardedCall(Backoff(retries=3, base_s=0.0), sleep=lambda s: None)
    with pytest.raises(RewardOutputError):
        guard(score_parts, as_reward(bad), IMAGES, METAS)
    assert len(calls) == 1


def test_details_and_eval_scores_are_forwarded(user_module):
    fn = load_reward(f"{user_module}:Strict")
    assert fn.version == "strict-v1"
    total, parts, correct = score_parts(fn, IMAGES, METAS)
    torch.testing.assert_close(correct, (IMAGES.mean(dim=(1, 2, 3)) > 0.5).float())
    assert reward_scorer(fn)(IMAGES, METAS) == [(1.0, 0.5)] * 4
    plain = as_reward(lambda images, metas: torch.ones(len(images)))
    assert not hasattr(plain, "details") and not hasattr(plain, "eval_scores")
    assert reward_scorer(plain)(IMAGES, METAS) == [(1.0, 1.0)] * 4

    class Bad:
        def __call__(self, images, metas):
            return torch.zeros(len(images))

        def details(self, images, metas):
            return torch.zeros(len(images))  # not a (scores, correct) pair

        def eval_scores(self, images, metas):
            return [0.5] * len(images)  # not (correct, score) rows

    bad = as_reward(Bad(), name="bad")
    with pytest.raises(RewardOutputError, match=r"reward 'bad' \(details\) returned Tensor"):
        bad.details(IMAGES, METAS)
    with pytest.raises(RewardOutputError, match=r"reward 'bad' \(eval_scores\) returned list"):
        bad.eval_scores(IMAGES, METAS)


def test_not_callable_is_refused_at_once():
    with pytest.raises(InputError, match="int 3 is not callable"):
        as_reward(3)


def test_spec_of_names_importable_rewards_only(user_module):
    import importlib

    mod = importlib.import_module(user_module)
    assert spec_of(mod.brightness) == f"{user_module}:brightness"
    assert spec_of(as_reward(mod.brightness)) == f"{user_module}:brightness"
    assert spec_of(lambda images, metas: images) is None

    def local(images, metas):
        return images

    assert spec_of(local) is None
