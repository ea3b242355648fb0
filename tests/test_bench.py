import json
from pathlib import Path

import numpy as np
import pytest

from dgpo import bench


def test_speed_ratio_on_synthetic_curves():
    def run(points):
        return {"steps": 1, "evals": [{"train_time_s": t, "images": 10 * t, "overall": v} for t, v in points]}

    results = {"flow_grpo": [run([(0, 0.5), (100, 0.6), (200, 0.7), (300, 0.7)])],
               "dgpo": [run([(0, 0.5), (20, 0.6), (50, 0.75), (300, 0.8)])]}
    r = bench.speed_ratio(results)
    # Flow-GRPO first reaches its best 0.7 at 200 s; DGPO's curve, linear between its evals 0.6 at
    # 20 s and 0.75 at 50 s, passes 0.7 at 40 s: 5x (one seed each, so every bootstrap agrees)
    assert r["target"] == 0.7 and 199 <= r["t_slow"] <= 201 and 39 <= r["t_fast"] <= 41
    assert 4.9 < r["ratio"] < 5.1 and r["p10"] == r["p90"] == r["ratio"]
    assert not r["first_interval"] and r["per_seed"]["dgpo"][0] == r["t_fast"]
    xs = np.array([0.0, 10.0, 400.0])
    assert np.isnan(bench.curve_at(results["dgpo"][0]["evals"], xs)[2])


def test_compare_calls_a_difference_only_beyond_two_standard_errors():
    def runs(finals):
        return [{"evals": [{"train_time_s": 0, "overall": 0.5}, {"train_time_s": 90, "overall": f},
                           {"train_time_s": 100, "overall": f}]} for f in finals]

    results = {"dgpo": runs([0.60, 0.62, 0.64]), "a": runs([0.50, 0.52, 0.54]), "b": runs([0.57, 0.67, 0.62])}
    a = bench.compare("a", "dgpo", results)
    # late score: the evals at >= 2/3 of 100 s, i.e. the two last ones; diff -0.1, se = 0.02 * sqrt(2/3)
    assert abs(a["diff"] + 0.1) < 1e-9 and abs(a["se"] - 0.02 * np.sqrt(2 / 3)) < 1e-9 and a["verdict"] == "lower"
    b = bench.compare("b", "dgpo", results)  # same mean, wide spread
    assert abs(b["diff"]) < 1e-9 and b["verdict"] == "no difference at this budget"


def test_flow_grpo_trains_longer_and_a_result_of_another_budget_is_rerun(tmp_path):
    spec = bench.BenchSpec(tmp_path, ["dgpo", "flow_grpo"], [0], 100.0, 10.0, 4)
    assert bench.run_config(spec, "flow_grpo", 0).run.time_budget_s == 100.0 * bench.BUDGET_SCALE["flow_grpo"]
    assert bench.run_config(spec, "dgpo", 0).run.time_budget_s == 100.0
    done = {"version": bench.RESULTS_VERSION, "budget_s": 100.0}
    assert bench.is_current(done, 100.0) and not bench.is_current(done, 300.0)
    # the slow arm's extra time counts for its time to target, not for the late score read at the budget
    runs = {"dgpo": [{"evals": [{"train_time_s": 0, "overall": 0.5}, {"train_time_s": 50, "overall": 0.7},
                                {"train_time_s": 100, "overall": 0.7}]}],
            "flow_grpo": [{"evals": [{"train_time_s": t, "overall": 0.5 + t / 1000} for t in range(0, 301, 50)]}]}
    r = bench.speed_ratio(runs, end=100.0, level="fast", n_boot=0)  # DGPO's late score: its 100 s eval, 0.7
    assert abs(r["target"] - 0.7) < 1e-9 and abs(r["t_slow"] - 200) < 2 and abs(r["t_fast"] - 50) < 1
    assert abs(r["ratio"] - 4.0) < 0.1 and r["slow_end"] == 300
    assert abs(bench.compare("flow_grpo", "dgpo", runs, end=100.0)["score"] - 0.6) < 1e-9  # its 100 s eval only


def test_per_category_spreads_over_each_category():
    from dgpo.evaluation import per_category

    metas = [{"tag": "x", "prompt": str(i)} for i in range(10)] + [{"tag": "y", "prompt": "y"}]
    assert [m["prompt"] for m in per_category(metas, 3)] == ["0", "3", "6", "y"]


@pytest.mark.slow
def test_bench_runs_arms_writes_the_report_and_resumes(tiny_toy, tmp_path):
    spec = bench.BenchSpec(tmp_path / "b", ["dgpo", "flow_grpo", "dpo"], [0, 1], 0.5, 0.25, 2, extra=(
        f"model.path={tiny_toy}", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
        "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=3", "timesteps.trunc_steps=2",
        "timesteps.count=2", "reward.name=jpeg_incompressibility"))
    results = bench.run_suite(spec)
    assert {k: len(v) for k, v in results.items()} == {"dgpo": 2, "flow_grpo": 2, "dpo": 2}
    for runs in results.values():
        for r in runs:
            times = [e["train_time_s"] for e in r["evals"]]
            assert times[0] == 0 and times == sorted(times) and times[-1] >= 0.5
            assert {"overall", "sharpness", "off_palette", "images"} <= set(r["evals"][-1])
    report = (tmp_path / "b" / "report.md").read_text()
    assert "DGPO vs Flow-GRPO" in report and "| dpo | 2 |" in report and "ratio" in report
    img = tmp_path / "b" / "img"
    assert img.is_dir() and len(list(img.glob("*.png"))) == 2  # comparisons with 2+ arms present
    raw = tmp_path / "b" / "raw" / "dgpo__s0.json"
    before = raw.stat().st_mtime_ns
    bench.run_suite(spec)  # resumes: finished runs are not run again
    assert raw.stat().st_mtime_ns == before
    made = json.loads(raw.read_text())
    assert made["arm"] == "dgpo" and made["extra"] == list(spec.extra) and made["device"] == "CPU"


def test_results_of_older_training_code_are_stale(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    run = {"arm": "dgpo", "seed": 0, "steps": 1, "evals": [{"train_time_s": 0, "overall": 0.5}]}
    (raw / "dgpo__s0.json").write_text(json.dumps(run))  # no version: before the official grids
    (raw / "dgpo__s1.json").write_text(json.dumps({**run, "seed": 1, "version": bench.RESULTS_VERSION}))
    assert not bench.is_current(run)
    made = {**run, "version": bench.RESULTS_VERSION, "budget_s": 360.0, "extra": ["train.group_size=24"]}
    assert bench.is_current(made, 360.0, ("train.group_size=24",))
    assert not bench.is_current(made, 360.0, ())  # other overrides for every arm (dgpo bench --set): rerun
    assert not bench.is_current({**made, "extra": []}, 360.0, ("train.group_size=24",))
    assert [r["seed"] for r in bench.load_results(raw)["dgpo"]] == [1]
    shipped = sorted((Path(__file__).resolve().parents[1] / "docs" / "bench" / "raw").glob("*.json"))
    spec = bench.default_spec(Path("unused"))  # the committed report's results are current, at its budgets
    assert shipped and all(bench.is_current(r := json.loads(p.read_text()), bench.arm_budget(spec, r["arm"]))
                           for p in shipped)


def test_cli_bench_report_only_names_the_overrides_for_every_arm(tmp_path, capsys):
    from dgpo.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    for arm in ("dgpo", "flow_grpo"):
        evals = [{"train_time_s": t, "overall": 0.5 + 0.001 * t, "images": 10 * t, "sharpness": 0.1,
                  "off_palette": 0.0, "step": t} for t in (0, 30, 60)]
        run = {"arm": arm, "seed": 0, "version": bench.RESULTS_VERSION, "steps": 3, "evals": evals,
               "extra": ["train.group_size=24"], "device": "NVIDIA H100 80GB HBM3", "threads": 16}
        (raw / f"{arm}__s0.json").write_text(json.dumps(run))
    assert main(["bench", "--out", str(tmp_path), "--report-only", "--seeds", "1", "--arms", "dgpo,flow_grpo",
                 "--set", "train.group_size=24"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Overrides for every arm: `train.group_size=24`" in report
    assert "on NVIDIA H100 80GB HBM3 with 16 CPU thread(s) per run" in report


def test_overrides_for_every_arm_are_checked_and_results_of_other_devices_rerun():
    from dataclasses import replace

    import pytest

    from dgpo.errors import ConfigError, InputError

    assert set(bench.SUITE_ARMS) <= set(bench.ARMS) and set(bench.QUICK_ARMS) <= set(bench.ARMS)
    spec = bench.BenchSpec(Path("unused"), ["dgpo", "flow_grpo"], [0], 10.0, 5.0, 2)
    bench.check_extra(replace(spec, extra=("train.batch_size=256", "reward.url=http://x/?a=b c")))
    for extra, words in ((("run.seed=0",), "the bench sets it"), (("train.steps_per_epoch=1",), "flow_grpo"),
                         (("train.batch_size",), "KEY=VALUE")):
        with pytest.raises(InputError, match=words):
            bench.check_extra(replace(spec, extra=extra))
    with pytest.raises(ConfigError, match="train.no_such_key"):
        bench.check_extra(replace(spec, extra=("train.no_such_key=1",)))
    made = {"version": bench.RESULTS_VERSION, "budget_s": 10.0, "extra": [], "device": "NVIDIA H100 80GB HBM3"}
    assert bench.is_current(made, 10.0, (), "NVIDIA H100 80GB HBM3") and not bench.is_current(made, 10.0, (), "CPU")
    assert bench.is_current({k: v for k, v in made.items() if k != "device"}, 10.0, (), "CPU")  # older: CPU


def test_report_says_when_runs_were_made_with_different_overrides(tmp_path):
    from dgpo.bench_report import _overrides, _threads

    run = lambda extra, device: {"extra": extra, "device": device, "threads": 2}  # noqa: E731
    assert _overrides({"dgpo": [run([], "CPU")]}) == ""
    assert "different overrides" in _overrides({"dgpo": [run(["train.batch_size=256"], "CPU")],
                                                "flow_grpo": [run([], "CPU")]})
    assert _threads({"dgpo": [run([], "CPU"), run([], "NVIDIA H200")]}).startswith("on CPU and NVIDIA H200 with")
    assert _threads({"dgpo": [run([], "CPU")]}) == "2 CPU thread(s) per run"


def test_report_reads_a_slow_arms_level_over_its_whole_longer_run(tmp_path):
    from dgpo.bench_report import render_report

    def runs(points, budget):
        return [{"arm": "x", "seed": s, "steps": 10, "budget_s": budget,
                 "evals": [{"train_time_s": t, "images": 10 * t, "overall": v + off, "step": t, "sharpness": 0.1,
                            "off_palette": 0.0} for t, v in points]} for s, off in enumerate((-0.005, 0.0, 0.005))]

    results = {"dgpo": runs([(0, 0.5), (30, 0.6), (60, 0.62)], 60.0),
               "flow_grpo": runs([(0, 0.5), (60, 0.49), (120, 0.5), (180, 0.49)], 180.0),
               "flow_grpo_lr1e-4": runs([(0, 0.5), (60, 0.5), (120, 0.53), (180, 0.55)], 180.0)}
    spec = bench.BenchSpec(tmp_path, ["dgpo", "flow_grpo", "flow_grpo_lr1e-4"], [0, 1, 2], 60.0, 30.0, 2)
    report = render_report(spec, results).read_text()
    # flow_grpo_lr1e-4 is flat within the suite's 60 s but ends at 0.54 over its 180 s (the mean of its evals
    # at >= 120 s); its seed-mean curve reaches 0.54 at 150 s, DGPO's (0.5 -> 0.6 over 30 s) at 12 s: 12.5x
    line = next(ln for ln in report.splitlines() if ln.startswith("- Flow-GRPO (flow_grpo_lr1e-4)'s late score 0.540, "
                                                                  "by s"))
    assert "reaches it at 150" in line and "DGPO reaches it at 12;" in line and "**12.5x**" in line
    # plain Flow-GRPO ends below its start: no level to time
    assert "- Flow-GRPO's late score: no ratio, undefined as a target: it ends where it starts or below" in report
    # DGPO's level (0.61 at 60 s): neither Flow-GRPO arm gets there, a bound by its whole run
    assert report.count("never gets there within its run (more than") == 4


def test_report_has_out_of_domain_columns_and_names_an_arm_that_hacks_its_reward(tmp_path):
    from dgpo.bench_report import _extra_names, _hacking_line, render_report

    def runs(reward, sharp):
        """Three seeds; the target reward and toy_sharpness move linearly by ``reward`` / ``sharp`` per
        30 s over 0..90 s, every per-image standard error 0.01 (noise threshold 2 sqrt(2) 0.01 = 0.028)."""
        return [{"arm": "x", "seed": s, "steps": 10, "evals": [
            {"train_time_s": t, "images": 10 * t, "step": t, "overall": 0.5 + t / 1000, "sharpness": 0.1,
             "off_palette": 0.0, "reward": 0.5 + reward * t / 30, "reward_se": 0.01,
             "extra": {"toy_sharpness": 0.3 + sharp * t / 30 + s / 100, "toy_off_palette": 0.9},
             "extra_se": {"toy_sharpness": 0.01, "toy_off_palette": 0.01}} for t in (0, 30, 60, 90)]}
            for s in range(3)]

    results = {"dgpo": runs(0.05, 0.01), "flow_grpo": runs(0.05, -0.02)}  # Flow-GRPO's sharpness falls 0.06
    spec = bench.BenchSpec(tmp_path, ["dgpo", "flow_grpo"], [0, 1, 2], 90.0, 30.0, 2)
    report = render_report(spec, results).read_text()
    header = next(ln for ln in report.splitlines() if ln.startswith("| arm |"))
    assert header.endswith("| toy_sharpness (late) | toy_off_palette (late) |")
    # late: the evals at >= 60 s; seeds offset by 0, 0.01, 0.02 -> mean 0.01
    dgpo_row = next(ln for ln in report.splitlines() if ln.startswith("| DGPO") or ln.startswith("| dgpo"))
    assert dgpo_row.endswith(f"| {0.3 + 0.01 * 2.5 + 0.01:.4f} | 0.9000 |")
    fg_row = next(ln for ln in report.splitlines() if ln.startswith("| Flow-GRPO") or ln.startswith("| flow_grpo"))
    assert fg_row.endswith(f"| {0.3 - 0.02 * 2.5 + 0.01:.4f} | 0.9000 |")
    hack = next(ln for ln in report.splitlines() if ln.startswith("- Reward hacking"))
    assert "seed 0: toy_sharpness fell; seed 1: toy_sharpness fell; seed 2: toy_sharpness fell" in hack
    assert "DGPO" not in hack.split("):", 1)[1] and "dgpo" not in hack.split("):", 1)[1]
    calm = {"dgpo": runs(0.05, 0.01), "flow_grpo": runs(0.05, -0.005)}
    assert _hacking_line(["dgpo", "flow_grpo"], calm, 90.0).endswith("): no arm flagged.")  # 0.015: noise
    plain = {a: [{**r, "evals": [{k: v for k, v in e.items() if k != "extra"} for e in r["evals"]]} for r in rs]
             for a, rs in results.items()}
    assert _extra_names(plain) == []  # older results: no out-of-domain columns, no hacking line
