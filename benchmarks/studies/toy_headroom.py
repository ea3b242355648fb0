"""Where a toy world's RL headroom is, in one run: pass@1 vs pass@G of a model on the held-out split,
and what N steps of RL reach when trained on held-out-disjoint prompts (the world's train split, as the
demo) versus on the test prompts themselves (in-distribution: the ceiling of generalisation).

Worlds: ``image`` (the shapes toy: toy:test, the embedded demo config) and ``edit`` (the toy editing
world: toy_edit:test scored by the edit scorer, configs/toy_edit.yaml; the base is model.path or the
shipped editing base).

Usage: python -m benchmarks.studies.toy_headroom [--world image|edit] [--group 8] [--steps 24] [--model PATH]
[key=value ...]. Writes bench_results/toy_headroom[_edit].json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dgpo.config import load_config
from dgpo.data.prompts import load_prompts
from dgpo.evaluation import evaluate, markdown_table, model_image_fn
from dgpo.models.loading import load_model
from dgpo.training.trainer import Trainer

from benchmarks.common import write_result

# world: (config file (None: the embedded demo), held-out split, train split)
EDIT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy_edit.yaml"
WORLDS = {"image": (None, "toy:test", "toy:train"), "edit": (EDIT_CONFIG, "toy_edit:test", "toy_edit:train")}


def _score_fn(world: str):
    """The world's eval scorer (None: the image toy's GenEval scorer, evaluate's default)."""
    if world == "edit":
        from dgpo.rewards.toy_edit import ToyEditReward

        return ToyEditReward().eval_scores
    return None


def headroom(world: str, model_path: str, group: int, seed: int) -> dict:
    """pass@1 (every image) and pass@G (any of the first G images) per category, held-out split."""
    config, test, _ = WORLDS[world]
    cfg = load_config(config, [f"model.path={model_path}"])
    model = load_model(cfg.model)
    fn = model_image_fn(model, cfg.sampler.steps, cfg.sampler.shift or model.default_shift(), cfg.sampler.cfg_scale)
    res = evaluate(fn, load_prompts(test), group, seed, 64, f"pass@{group}", 0, score_fn=_score_fn(world))
    print(markdown_table({"model": res}), end="")
    return {k: v for k, v in res.items() if k != "rows"}


def rl_run(world: str, name: str, prompts: str, steps: int, overrides: list[str], tmp: Path) -> dict:
    cfg = load_config(WORLDS[world][0], [f"run.out_dir={tmp / name}", f"run.epochs={steps}", f"train.prompts={prompts}",
                                         "run.sample_every=0", "run.save_every=0", *overrides])
    t0 = time.time()
    summary = Trainer(cfg).fit()
    strip = lambda e: {k: v for k, v in e.items() if k != "pass_at_n"}
    return {"prompts": prompts, "steps": summary["steps"], "wall_s": time.time() - t0,
            "before": strip(summary["eval_before"]), "after": strip(summary["eval_after"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", choices=sorted(WORLDS), default="image", help="image: the shapes toy; edit: editing")
    ap.add_argument("--group", type=int, default=8, help="G of pass@G")
    ap.add_argument("--steps", type=int, default=24, help="RL optimizer steps per run (0: headroom only)")
    ap.add_argument("--model", default="", help="toy checkpoint folder ('' = the world's shipped base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="default: bench_results/toy_headroom.json (edit: _edit.json)")
    ap.add_argument("overrides", nargs="*", help="config overrides for the RL runs")
    a = ap.parse_args()
    out = a.out or f"bench_results/toy_headroom{'_edit' if a.world == 'edit' else ''}.json"
    result = {"world": a.world, "model": a.model or "shipped base", "group": a.group,
              "headroom": headroom(a.world, a.model, a.group, a.seed)}
    if a.steps:
        runs = {}
        _, test_split, train_split = WORLDS[a.world]
        with tempfile.TemporaryDirectory() as tmp:
            test = Path(tmp) / "test.jsonl"
            test.write_text("".join(json.dumps(m) + "\n" for m in load_prompts(test_split)))
            for name, prompts in (("held_out", train_split), ("in_distribution", str(test))):
                runs[name] = rl_run(a.world, name, prompts, a.steps, [f"model.path={a.model}", *a.overrides],
                                    Path(tmp))
        after = {f"after ({k})": r["after"] for k, r in runs.items()}
        print(markdown_table({"before": runs["held_out"]["before"], **after}))
        result.update(rl=runs, overrides=a.overrides)
    write_result(result, out)


if __name__ == "__main__":
    main()
