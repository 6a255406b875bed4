"""The benchmarks in bench/ run, in their smallest configuration on the random-weight test checkpoint,
in-process in this test's ComfyUI, and report every row with finite numbers. Nothing here asserts on
wall time or on the ratios: those are what the benchmarks are for."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import _common, apply_overhead, step_cost


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module", autouse=True)
def shared_checkpoint(comfy, svd):
    """The benchmarks load the test checkpoint with the same stock loader: reuse the session's."""
    _common.remember_loaded(comfy, "test", svd)
    yield
    _common.forget_loaded()


@pytest.fixture(scope="module")
def step_cost_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "step_cost.json"
    result = step_cost.main(["--model", "test", "--quick", "--device", "cpu", "--out", str(out)])
    return result, json.loads(out.read_text())


def test_step_cost_reports_every_row(step_cost_run):
    result, saved = step_cost_run
    assert saved["bench"] == "step_cost" and saved["device"] and saved["date"] and saved["model"] == "test"
    assert saved["default_steps"] >= 1 and saved["targets"] == {"no_checkpointing": 2.2, "checkpointing": 3.2}
    rows = {(r["dtype"], r["run"]): r for r in saved["rows"]}
    assert set(rows) == {(d, run) for d in ("fp32", "bf16") for run in ("forward", "step", "step_ckpt")}
    for (dtype, run), row in rows.items():
        assert row["error"] is None, row
        assert row["size"] == "32x32" and row["frames"] == 2
        for key in ("seconds", "time_ratio", "flops", "tflops_per_s"):
            assert finite(row[key]) and row[key] > 0, (dtype, run, key, row[key])
        if run == "forward":
            assert row["time_ratio"] == 1.0 and row["target"] is None
        else:
            assert row["checkpointing"] == (run == "step_ckpt")
            assert row["target"] == (3.2 if run == "step_ckpt" else 2.2)
            for key in ("memory_bytes", "memory_ratio", "preflight_estimate_bytes", "minutes_per_motion"):
                assert finite(row[key]) and row[key] > 0, (dtype, run, key, row[key])
    # The step backpropagates through the forward, so it costs more FLOPs (not a timing assertion).
    for dtype in ("fp32", "bf16"):
        assert rows[dtype, "step"]["flops"] > rows[dtype, "forward"]["flops"]
        assert rows[dtype, "step_ckpt"]["flops"] > rows[dtype, "step"]["flops"]  # recomputation
    assert result["rows"] and len(result["rows"]) == len(saved["rows"])


def test_step_cost_prints_the_table(step_cost_run):
    table = step_cost.render(step_cost_run[1])
    lines = table.splitlines()
    assert "Inversion step vs plain forward" in lines[0] and "saved_tensors_hooks" in lines[0]
    body = [line for line in lines[3:] if line.strip()]
    assert len(body) == 6
    assert sum("forward (inference)" in line for line in body) == 2 and sum("step + ckpt" in line for line in body) == 2
    assert all(("forward (inference)" in line) or ("step + ckpt" in line and "<=3.2x" in line) or ("<=2.2x" in line) for line in body)


def test_full_size_svd_unet_is_what_comfyui_detects_as_svd(comfy):
    """--model svd-full / svd-xt-full build this (on meta here: shapes only, instantly)."""
    base = _common.build_full_svd(torch.bfloat16, device="meta")
    assert type(base).__name__ == "SVD_img2vid"
    assert 1.50e9 < sum(p.numel() for p in base.diffusion_model.parameters()) < 1.55e9


def test_apply_overhead_reports_both_graphs(tmp_path):
    out = tmp_path / "apply.json"
    apply_overhead.main(["--model", "test", "--quick", "--device", "cpu", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["bench"] == "apply_overhead" and saved["device"] and saved["date"] and saved["target_time_ratio"] == 1.02
    assert "RSS" in saved["memory_measure"] or "ru_maxrss" in saved["memory_measure"]
    rows = {r["graph"]: r for r in saved["rows"]}
    assert set(rows) == {"stock", "motion"}
    for row in rows.values():
        for key in ("graph_seconds", "sample_seconds", "time_ratio", "sample_ratio"):
            assert finite(row[key]) and row[key] > 0, (row["graph"], key, row[key])
        assert finite(row["memory_bytes"]) and row["memory_bytes"] >= 0
    assert rows["stock"]["time_ratio"] == 1.0
    assert rows["motion"]["apply_seconds"] > 0 and rows["stock"]["apply_seconds"] == 0
    table = apply_overhead.render(saved).splitlines()
    assert table[0].startswith("Apply overhead") and any("ApplyMotionEmbedding" in line for line in table[2:])


def test_convergence_bench_scores_every_variant(tmp_path):
    """bench.convergence in a tiny configuration on the bundled Motion World model: every variant
    is scored at its checkpoints with finite losses, and the best long run's loss is the reference."""
    from bench import convergence

    out = tmp_path / "convergence.json"
    convergence.main(["--steps", "25", "--long", "50", "--eval-draws", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    longs = convergence.long_runs(50)
    assert set(result["runs"]) == set(convergence.variants()) | set(longs)
    for run in result["runs"].values():
        scores = {int(k): v for k, v in run["scores"].items()}
        assert max(scores) in (25, 50) and all(math.isfinite(v) and v > 0 for v in scores.values())
    assert result["long_best"] == min(min(result["runs"][name]["scores"].values()) for name in longs)
    for run in result["runs"].values():  # a run counts only once it is within 5% of the best long run
        within = run["steps_to_within_5pct"]
        assert within is None or run["scores"][str(within)] <= 1.05 * result["long_best"]


def test_motion_world_bench_scores_every_condition_and_writes_strips(tmp_path):
    """bench.motion_world_bench in miniature (1 reference x 1 target, 3 inversion steps): every condition
    is generated through the pack's nodes, scored, summarised, and drawn in the strip."""
    from bench import motion_world_bench

    out = tmp_path / "mw"
    conditions = "null context;shared token F'=1,N=1;per-frame (F+1)xN;oracle tokens"
    motion_world_bench.main(["--seeds", "1", "--references", "1", "--targets", "1", "--steps", "3", "--sampler-steps", "2",
                             "--conditions", conditions, "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    names = {"null context", "shared token F'=1,N=1", "per-frame (F+1)xN", "oracle tokens"}
    assert set(result["table"]) == names and {r["condition"] for r in result["rows"]} == names
    assert set(result["by_target"]) == names and all(set(t) == {"0"} for t in result["by_target"].values())
    for row in result["rows"]:
        assert finite(row["trajectory_error"]) and 0 <= row["leakage"] <= 1 and 0 <= row["lost_frames"] <= 8
        assert (row["final_loss"] is None) == (row["condition"] in ("null context", "oracle tokens"))
    assert "tokens_per_frame=1" in next(r for r in result["rows"] if r["condition"] == "shared token F'=1,N=1")["inversion_config"]
    assert [p.name for p in (out / "strips").iterdir()] == ["unseen_direction_up_left.png"]


def test_motion_world_bench_sweep_runs_each_setting_through_the_options_node(tmp_path):
    """--sweep: each augmentation / setting reaches the inversion (as the node records it in the embedding)."""
    from bench import motion_world_bench

    out = tmp_path / "sweep"
    motion_world_bench.main(["--sweep", "--seeds", "1", "--references", "1", "--targets", "1", "--steps", "3", "--sampler-steps", "2",
                             "--conditions", "+ all four;lr 0.3 cosine (the node's default)", "--out", str(out)])
    rows = {r["condition"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    augmented = rows["+ all four"]["inversion_config"]
    for setting in ("color_jitter': 0.3", "cond_noise': 0.1", "random_cond_frame': True", "crop_scale': 0.8"):
        assert setting in augmented, augmented
    assert "learning_rate=0.01" in augmented and "schedule=constant" in augmented  # the Motion World workflow's setting
    node_default = rows["lr 0.3 cosine (the node's default)"]["inversion_config"]
    assert "learning_rate=0.3" in node_default and "schedule=cosine" in node_default and "color_jitter': 0.0" in node_default


def test_motion_world_bench_inverts_per_target_with_another_reference_look(tmp_path):
    """--reference-look target: each reference motion is inverted once per target, on that target's own scene
    (so the two targets' embeddings fit different clips), and --options reach the node (hue_shift is optional)."""
    from bench import motion_world_bench
    from motion_world import world

    def run(*extra):
        out = tmp_path / "-".join(extra or ("own",))
        motion_world_bench.main(["--seeds", "1", "--references", "1", "--targets", "2", "--steps", "3", "--sampler-steps", "2",
                                 "--conditions", "per-frame (F+1)xN", "--options", '{"schedule": "constant", "hue_shift": 0.5}',
                                 "--out", str(out), *extra])
        return json.loads((out / "results.json").read_text())["rows"]

    own = run()
    assert [r["target"] for r in own] == [0, 1] and own[0]["final_loss"] == own[1]["final_loss"]  # one inversion for both
    assert "hue_shift': 0.5" in own[0]["inversion_config"]
    per_target = run("--reference-look", "target")
    assert [r["target"] for r in per_target] == [0, 1] and per_target[0]["final_loss"] != per_target[1]["final_loss"]
    assert [r["target"] for r in run("--reference-look", "target-sprite", "--only-target", "1")] == [1]

    reference, target = world.target_scenes(2, seed=5)
    assert motion_world_bench.restyled(reference, target, "target") is target
    sprite = motion_world_bench.restyled(reference, target, "target-sprite")
    assert (sprite.shape, sprite.sprite_color, sprite.position, sprite.background) == (target.shape, target.sprite_color, reference.position, reference.background)
    background = motion_world_bench.restyled(reference, target, "target-background")
    assert (background.shape, background.position, background.background) == (reference.shape, reference.position, target.background)
    position = motion_world_bench.restyled(reference, target, "target-position")
    assert (position.shape, position.position, position.background) == (reference.shape, target.position, reference.background)


def test_motion_world_bench_reads_the_oracle_encoder_of_files_trained_with_options_it_does_not_know(tmp_path):
    """A Motion World file written by another version of the training script (an extra train_config field)
    still gives its oracle tokens: the bench compares models trained with and without such options."""
    import safetensors.torch

    from bench import motion_world_bench

    shipped = motion_world_bench.REPO / "motion_world" / "motion_world.safetensors"
    with safetensors.safe_open(str(shipped), framework="pt") as f:
        metadata = f.metadata()
    config = {**json.loads(metadata["train_config"]), "an_option_from_elsewhere": 0.5}
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(str(shipped)), str(other), {**metadata, "train_config": json.dumps(config)})
    expected = motion_world_bench.load_motion_encoder(shipped).state_dict()
    loaded = motion_world_bench.load_motion_encoder(other).state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_classes_bench_applies_each_reference_to_every_other_class_under_every_condition(tmp_path):
    """bench.classes_bench (issue #28) in miniature, on a Motion World model trained for a few steps on the
    class-coupled world with an appearance-only context: one reference, its three targets, every condition."""
    from bench import classes_bench
    from motion_world import classes
    from motion_world import train as train_script

    model = tmp_path / "classes.safetensors"
    train_script.main(["--world", "classes", "--context", "appearance", "--ae-steps", "2", "--ae-batch", "2", "--clips", "6",
                       "--unet-steps", "10", "--unet-batch", "2", "--threads", "1", "--out", str(model)])  # 2 steps: the zero-initialised
    # attention outputs still cut every path from the context, and the node refuses to invert (TokensCannotLearn)
    out = tmp_path / "bench"
    classes_bench.main(["--model", str(model), "--seeds", "1", "--references", "1", "--steps", "2", "--sampler-steps", "2", "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    names = [c.name for c in classes_bench.CONDITIONS]
    assert sorted(result["table"]["all"]) == sorted(names)
    case = classes.test_cases(1, seed=0)[0]
    for name in names:
        rows = [r for r in result["rows"] if r["condition"] == name]
        assert sorted(r["target_class"] for r in rows) == sorted(classes.class_of(t).name for t in case.targets)
        assert all(r["reference_class"] == classes.class_of(case.reference.scene).name and finite(r["trajectory_error"]) for r in rows)
        assert all((r["final_loss"] is None) == (name in (classes_bench.OWN_TOKEN, classes_bench.REFERENCE_TOKEN)) for r in rows)
    assert [p.suffix for p in (out / "strips").iterdir()] == [".png"]

    # --sweep: each anti-leakage augmentation reaches the inversion (as the node records it in the embedding)
    classes_bench.main(["--model", str(model), "--sweep", "--seeds", "1", "--references", "1", "--steps", "2", "--sampler-steps", "2",
                        "--conditions", "+ hue shift 0.5;+ random conditioning frame", "--out", str(tmp_path / "sweep")])
    rows = {r["condition"]: r for r in json.loads((tmp_path / "sweep" / "results.json").read_text())["rows"]}
    assert "hue_shift': 0.5" in rows["+ hue shift 0.5"]["inversion_config"]
    assert "random_cond_frame': True" in rows["+ random conditioning frame"]["inversion_config"]
    assert "hue_shift': 0.0" in rows["+ random conditioning frame"]["inversion_config"]


def test_classes_bench_merges_seeds_run_apart_and_refuses_a_seed_twice(tmp_path):
    """--merge: seeds run one by one (--only-seed) make one table, as one run of all of them would."""
    from bench import classes_bench

    def row(seed, condition, error):
        return {"seed": seed, "condition": condition, "kind": "family", "held_out": False, "trajectory_error": error,
                "direction_agreement": 0.5, "area_kept": 1.0, "leakage": 0.0, "final_loss": None}

    files = []
    for seed, errors in ((0, (1.0, 3.0)), (1, (2.0, 5.0))):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({"rows": [row(seed, "a", errors[0]), row(seed, "b", errors[1])]}))
        files.append(path)
    classes_bench.main(["--merge", *map(str, files), "--out", str(tmp_path / "merged")])
    table = json.loads((tmp_path / "merged" / "results.json").read_text())["table"]["all"]
    assert list(table) == ["a", "b"] and table["a"]["pairs"] == 2
    assert table["a"]["trajectory_error"] == 1.5 and table["b"]["trajectory_error_per_seed"] == [3.0, 5.0]
    with pytest.raises(SystemExit, match="already in an earlier file"):
        classes_bench.main(["--merge", str(files[0]), str(files[0]), "--out", str(tmp_path / "twice")])


def test_context_probe_tells_a_model_that_reads_its_context_from_one_that_cannot(tmp_path):
    """bench.context_probe (issue #28) on the bundled motion-token model, which reads its context, and on a copy
    whose cross-attention values are zeroed, which cannot: swapping contexts must cost the first and not the second."""
    import safetensors
    import safetensors.torch

    from bench import context_probe

    bundled = context_probe.REPO / "motion_world" / "motion_world.safetensors"
    result = context_probe.main(["--model", str(bundled), "--clips", "6", "--sigmas", "2", "--augmentation", "0"])
    (row,) = result["table"].values()
    assert row["swapped"]["sprite_loss_vs_own"] > 0.5 and row["null"]["loss_vs_own"] > 0.1

    tensors = safetensors.torch.load_file(str(bundled))
    with safetensors.safe_open(str(bundled), framework="pt") as f:
        metadata = f.metadata()
    deaf = {k: torch.zeros_like(v) if ".attn2.to_v." in k else v for k, v in tensors.items()}
    assert sum(".attn2.to_v." in k for k in tensors) >= 4
    safetensors.torch.save_file(deaf, str(tmp_path / "deaf.safetensors"), metadata=metadata)
    result = context_probe.main(["--model", str(tmp_path / "deaf.safetensors"), "--clips", "6", "--sigmas", "2", "--augmentation", "0,0.5",
                                 "--out", str(tmp_path / "probe.json")])
    assert len(result["table"]) == 2
    for row in result["table"].values():
        assert abs(row["swapped"]["loss_vs_own"]) < 1e-4 and abs(row["null"]["sprite_loss_vs_own"]) < 1e-4
    assert json.loads((tmp_path / "probe.json").read_text())["table"].keys() == result["table"].keys()


def test_nearest_centroid_accuracy_tells_separable_tokens_from_uninformative_ones():
    from bench.context_probe import nearest_centroid_accuracy

    g = torch.Generator().manual_seed(0)
    labels = ["a", "b", "c", "d"] * 10
    centres = torch.randn(4, 16, generator=g) * 5
    separable = centres[torch.arange(40) % 4] + torch.randn(40, 16, generator=g)
    assert nearest_centroid_accuracy(separable, labels) == 1.0
    assert nearest_centroid_accuracy(torch.randn(40, 16, generator=g), labels) < 0.6


@pytest.mark.parametrize(("kind", "held_out", "groups"), [
    ("family", False, {"all", "family"}), ("family", True, {"all", "family, held-out motion"}), ("no family", False, {"all", "no family"}),
])
def test_classes_bench_groups_rows_by_what_the_motion_is(kind, held_out, groups):
    from bench import classes_bench

    row = {"kind": kind, "held_out": held_out}
    assert {g for g in classes_bench.GROUPS if classes_bench.in_group(row, g)} == groups
