"""The benchmark scripts run end to end in their --quick CPU mode and return well-formed results.

Timings on a shared CPU mean nothing, so only the structure is checked: every ratio is a positive finite number,
FLOP counts agree with an independent count, and the two tau searches agree (the script asserts it too).
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
    plains = [r for r in rows if r["variant"] == "plain"]
    assert all(r["img_s_ratio"] == 1.0 and r["flop_rate_ratio"] == 1.0 for r in plains)


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
    assert tau["results_equal"] and tau["num_samples"] == 24 and positive_finite(tau["speedup"])
    assert [r["tau"] for r in tau["sweep"]] == tau["grid"] and tau["tau"] in tau["grid"]
    acc = saved["acceptance"]
    assert acc["backbone"] == "test_resnet" and acc["applies"] is False  # CPU and not ResNet-50
    assert acc["light_img_s_ratio_met"] == (acc["light_img_s_ratio"] >= gpu_suite.ACCEPTANCE_TARGET)
    assert saved["settings"]["precision"] == "bf16" and saved["settings"]["channels_last"] is True
    pipelines = saved["input_pipeline"]["pipelines"]
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
    assert train_step.variants_for("resnet50", ["faithful", "light+sync"]) == ["plain", "faithful", "light+sync"]
    assert train_step.variants_for("vit_base_patch16_224", ["light", "faithful"]) == ["plain", "faithful"]
    with pytest.raises(ValueError, match="unknown variants"):
        train_step.variants_for("resnet50", ["plain+sync"])


@pytest.mark.slow
def test_train_step_cli_writes_json(tmp_path, restore_threads):
    out = tmp_path / "ts.json"
    train_step.main(TINY + ["--backbones", "test_resnet", "--variants", "plain", "light+sync", "--out", str(out)])
    saved = json.loads(out.read_text())
    check_train_rows(saved["rows"], [("test_resnet", "plain"), ("test_resnet", "light+sync")])
    assert saved["rows"][0]["settings"]["image_size"] == 32


@pytest.mark.slow
def test_tau_search_cli_agrees_with_recompute(tmp_path):
    out = tmp_path / "tau.json"
    tau_search.main(["--quick", "--tau_samples", "20", "--tau_batch_size", "8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results_equal"] and positive_finite(saved["speedup"]) and positive_finite(saved["cpu_time_speedup"])
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
