"""The benchmark scripts run end to end in their --quick CPU mode and what they report is what they measured.

Timings on a shared CPU mean nothing, so the checks are on the measurements' relations: every ratio is the quotient
of the two rates measured in the same run, FLOP counts agree with an independent count, the two tau searches'
correct counts (measured separately) agree, and the loop benchmark's ratio is its two rates' quotient.
"""
import json
import math
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_suite  # noqa: E402
import tau_search  # noqa: E402
import train_step  # noqa: E402

TINY = ["--quick", "--threads", "1", "--warmup", "0", "--steps", "1"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def check_train_rows(rows, expected):
    assert [(r["backbone"], r["variant"]) for r in rows] == expected
    for r in rows:
        for key in ("img_s", "train_gflops", "forward_gflops", "achieved_tflop_s", "img_s_ratio", "flop_rate_ratio",
                    "flops_ratio", "cpu_time_img_s_ratio"):
            assert positive_finite(r[key]), (r["variant"], key, r[key])
        assert r["memory_kind"] == "cpu_rss_delta_approx"
        assert r["train_gflops"] == pytest.approx(3 * r["forward_gflops"])
    for r in rows:  # every ratio is the quotient of this row's and its backbone's plain row's measurements
        plain = next(p for p in rows if p["backbone"] == r["backbone"] and p["variant"] == "plain")
        assert r["img_s_ratio"] == pytest.approx(r["img_s"] / plain["img_s"])
        assert r["flop_rate_ratio"] == pytest.approx(r["achieved_tflop_s"] / plain["achieved_tflop_s"])
        assert r["achieved_tflop_s"] == pytest.approx(r["train_gflops"] * r["img_s"] / 1e3)


@pytest.mark.slow
def test_gpu_suite_quick_writes_every_section(tmp_path, restore_threads):
    out = tmp_path / "suite.json"
    # bf16 autocast and channels_last: the settings of the GPU run, exercised on the CPU
    result = gpu_suite.main(TINY + ["--precision", "bf16", "--channels_last", "true", "--tau_samples", "24",
                                    "--tau_batch_size", "8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"] == torch.__version__ and saved["environment"]["device"] == "cpu"
    check_train_rows(saved["train_step"], [(b, v) for b, variants in gpu_suite.QUICK_PLAN for v in variants])
    tau = saved["tau_search"]
    assert tau["one_pass_correct"] == tau["recompute_correct"] and tau["results_equal"]  # measured both ways
    assert tau["num_samples"] == 24 and positive_finite(tau["speedup"])
    assert [r["tau"] for r in tau["sweep"]] == tau["grid"] and tau["tau"] in tau["grid"]
    acc = saved["acceptance"]
    assert acc["backbone"] == "test_resnet" and acc["applies"] is False  # CPU and not ResNet-50
    assert acc["light_met"] == (acc["light_img_s_ratio"] >= gpu_suite.LIGHT_TARGET)
    assert acc["faithful_vs_reference"] is None and acc["faithful_met"] is None  # no reference run on a CPU
    guard = saved["step_guard"]
    assert guard["ratio"] == pytest.approx(guard["guarded_img_s"] / guard["unguarded_img_s"], rel=1e-3)
    assert guard["flag_waits"] == 0  # on the CPU a flag read never waits
    assert [r["preset"] for r in saved["preset_smoke"]] == gpu_suite.QUICK_PRESETS
    assert all(r["loss_finite"] and positive_finite(r["img_s"]) for r in saved["preset_smoke"])
    assert positive_finite(saved["device_decode"]["img_s"])
    assert saved["settings"]["precision"] == "bf16" and saved["settings"]["channels_last"] is True
    pipelines = saved["input_pipeline"]["image_sizes"]["500x375"]["pipelines"]
    assert pipelines["torchvision ImageFolder"]["ratio_to_torchvision"] == 1.0
    assert all(positive_finite(p["ratio_to_torchvision"]) for p in pipelines.values())
    assert "compile_skipped" not in saved and not any(r["compile"] for r in saved["train_step"])
    assert result["tau_search"]["sweep"] == tau["sweep"]


def test_flop_counts_match_an_independent_count():
    """test_vit's plain forward FLOPs from the counter equal the matmuls counted by hand."""
    s = train_step.StepSettings(image_size=32, num_classes=10)
    flops = train_step.count_flops("test_vit", "plain", s)
    import timm
    vit = timm.create_model("test_vit", num_classes=10, img_size=32)
    tokens = (32 // vit.patch_embed.patch_size[0]) ** 2 + vit.num_prefix_tokens
    dim, hidden = vit.embed_dim, vit.blocks[0].mlp.fc1.out_features
    patch = tokens - vit.num_prefix_tokens
    macs = patch * 3 * vit.patch_embed.patch_size[0] ** 2 * dim                # patch embedding
    per_block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * hidden
    macs += len(vit.blocks) * per_block + dim * 10                            # blocks, then the head
    assert flops["forward_gflops"] * 1e9 == pytest.approx(2 * macs, rel=1e-9)  # 2 FLOPs per multiply-accumulate


def test_cascade_costs_more_flops_than_plain():
    s = train_step.StepSettings(image_size=32, num_classes=10, aux_width=32, aux_padding="same")
    plain = train_step.count_flops("test_resnet", "plain", s)["train_gflops"]
    light = train_step.count_flops("test_resnet", "light", s)["train_gflops"]
    faithful = train_step.count_flops("test_resnet", "faithful", s)["train_gflops"]
    assert plain < light < faithful


def test_variants_for_puts_plain_first_and_drops_light_for_vit():
    assert train_step.variants_for("resnet50", ["faithful", "light"]) == ["plain", "faithful", "light"]
    assert train_step.variants_for("vit_base_patch16_224", ["light", "faithful"]) == ["plain", "faithful"]
    with pytest.raises(ValueError, match="unknown variants"):
        train_step.variants_for("resnet50", ["plain+sync"])


@pytest.mark.slow
def test_train_step_cli_writes_json(tmp_path, restore_threads):
    out = tmp_path / "ts.json"
    train_step.main(TINY + ["--backbones", "test_resnet", "--variants", "plain", "light", "--out", str(out)])
    saved = json.loads(out.read_text())
    check_train_rows(saved["rows"], [("test_resnet", "plain"), ("test_resnet", "light")])
    assert saved["rows"][0]["settings"]["image_size"] == 32


@pytest.mark.slow
def test_tau_search_cli_agrees_with_recompute(tmp_path):
    out = tmp_path / "tau.json"
    tau_search.main(["--quick", "--tau_samples", "20", "--tau_batch_size", "8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["one_pass_correct"] == saved["recompute_correct"] and saved["one_pass_tau"] == saved["recompute_tau"]
    assert positive_finite(saved["speedup"]) and positive_finite(saved["cpu_time_speedup"])
    assert len(saved["sweep"]) == len(saved["grid"])
    # correct counts are whole numbers of the 20 images
    assert all(abs(r["top1"] * 20 - round(r["top1"] * 20)) < 1e-6 for r in saved["sweep"])


def test_synthetic_split_repeats_the_same_data():
    split = tau_search.SyntheticSplit(10, 4, 8, 5, "cpu", seed=3)
    first, second = list(split), list(split)
    assert [len(b["labels"]) for b in first] == [4, 4, 2] and len(split) == 3
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(first, second))


def test_long_tailed_counts_follow_the_exponential_profile():
    counts = tau_search.long_tailed_counts(5, max_count=1000, imbalance=16.0)
    assert counts == [1000, 500, 250, 125, 62]


@pytest.mark.slow
def test_lt_compare_quick_writes_its_table_plot_and_aggregates(tmp_path):
    import lt_compare
    out = tmp_path / "grid"
    lt_compare.main(["--quick", "--recipes", "ce", "cadel", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert [r["recipe"] for r in saved["runs"]] == ["ce", "cadel"]
    agg = saved["aggregate"]
    assert set(agg) == {"CE", "CE + post-hoc LA", "CADEL", "CADEL + exit weights on val", "CADEL + robust exit rule"}
    for label, metrics in agg.items():  # the aggregate is the runs' numbers, in %
        runs = [r["rows"][label] for r in saved["runs"] if label in r["rows"]]
        assert metrics["All"]["values"] == [100 * r["All"] for r in runs] and metrics["All"]["n"] == 1
    assert "| CADEL |" in (out / "table.md").read_text()
    assert set(saved["paired_vs_baseline"]["All"]) == {"CE", "CADEL", "CADEL + exit weights on val",
                                                        "CADEL + robust exit rule"}
    assert saved["runs"][1]["rule_evidence"]["val_size"] == 100  # 10 val images per class
    committed = json.loads((REPO / "benchmarks" / "results" / "lt_compare_fashion_mnist_lt_if100.json").read_text())
    assert saved.keys() == committed.keys() and saved["runs"][0].keys() >= committed["runs"][0].keys()
    assert saved["how"].startswith(f"`python benchmarks/lt_compare.py --quick --recipes ce cadel --out {out}`: "
                                   f"fashion_mnist_lt, IF 10, 2 epochs, seeds [0]; best epoch, tau and exit weights")
    assert (out / "lt_compare.png").read_bytes()[:4] == b"\x89PNG"
    assert lt_compare.main(["--quick", "--recipes", "ce", "cadel", "--out", str(out)]) == 0  # resumes: no retraining
    assert "$ " in (out / "log.txt").read_text() and (out / "log.txt").read_text().count("train_stage1") == 2


@pytest.mark.slow
def test_preset_smoke_quick_runs_a_real_step_of_a_preset():
    import preset_smoke
    rows = preset_smoke.main(["--quick", "--presets", "cifar10_lt"])
    assert rows[0]["preset"] == "cifar10_lt" and rows[0]["loss_finite"] and rows[0]["classes"] == 10
