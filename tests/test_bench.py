import json
from pathlib import Path

import numpy as np

from dgpo import bench


def test_speed_ratio_on_synthetic_curves():
    def run(points):
        return {"steps": 1, "evals": [{"train_time_s": t, "images": 10 * t, "overall": v} for t, v in points]}

    results = {"flow_grpo": [run([(0, 0.5), (100, 0.6), (200, 0.7), (300, 0.7)])],
               "dgpo": [run([(0, 0.5), (20, 0.6), (50, 0.75), (300, 0.8)])]}
    r = bench.speed_ratio(results)
    # Flow-GRPO first reaches its best 0.7 at 200 s; DGPO passes 0.7 at its 50 s eval
    assert r["target"] == 0.7 and r["t_slow"] >= 199 and 49 <= r["t_fast"] <= 52
    assert 3.8 < r["ratio"] < 4.1
    xs = np.array([0.0, 10.0, 400.0])
    assert np.isnan(bench.curve_at(results["dgpo"][0]["evals"], xs)[2])


def test_bench_runs_arms_writes_the_report_and_resumes(tiny_toy, tmp_path):
    spec = bench.BenchSpec(tmp_path / "b", ["dgpo", "flow_grpo", "dpo"], [0, 1], 0.5, 0.25, 2, extra=(
        f"model.path={tiny_toy}", "train.prompts_per_epoch=2", "train.group_size=4", "train.batch_size=8",
        "train.lora_rank=4", "train.lora_alpha=8", "sampler.steps=3", "dgpo.trunc_steps=2",
        "dgpo.num_train_timesteps=2", "reward.name=jpeg_incompressibility"))
    results = bench.run_suite(spec)
    assert {k: len(v) for k, v in results.items()} == {"dgpo": 2, "flow_grpo": 2, "dpo": 2}
    for runs in results.values():
        for r in runs:
            times = [e["train_time_s"] for e in r["evals"]]
            assert times[0] == 0 and times == sorted(times) and times[-1] >= 0.5
            assert {"overall", "sharpness", "off_palette", "images"} <= set(r["evals"][-1])
    report = (tmp_path / "b" / "report.md").read_text()
    assert "DGPO vs Flow-GRPO" in report and "| dpo | 2 |" in report and "ratio" in report
    assert (tmp_path / "b" / "img").is_dir() and len(list((tmp_path / "b" / "img").glob("*.png"))) == 2  # comparisons with 2+ arms present
    raw = tmp_path / "b" / "raw" / "dgpo__s0.json"
    before = raw.stat().st_mtime_ns
    bench.run_suite(spec)  # resumes: finished runs are not run again
    assert raw.stat().st_mtime_ns == before
    assert json.loads(raw.read_text())["arm"] == "dgpo"


def test_results_of_older_training_code_are_stale(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    run = {"arm": "dgpo", "seed": 0, "steps": 1, "evals": [{"train_time_s": 0, "overall": 0.5}]}
    (raw / "dgpo__s0.json").write_text(json.dumps(run))  # no version: before the official grids
    (raw / "dgpo__s1.json").write_text(json.dumps({**run, "seed": 1, "version": bench.RESULTS_VERSION}))
    assert not bench.is_current(run)
    assert [r["seed"] for r in bench.load_results(raw)["dgpo"]] == [1]
    shipped = sorted((Path(__file__).resolve().parents[1] / "docs" / "bench" / "raw").glob("*.json"))
    assert shipped and not any(bench.is_current(json.loads(p.read_text())) for p in shipped)  # rerun them
