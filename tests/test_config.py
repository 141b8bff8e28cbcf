"""Presets, YAML files and command-line overrides: precedence, types, and errors that name the fix."""
import pytest
import yaml

from cadel_modeling.config import STAGE2, ConfigError, RunConfig, load_run_config, parse_config, preset_names


def test_defaults_without_preset():
    cfg = parse_config([])
    assert cfg == RunConfig()


def test_preset_then_cli_override_in_both_spellings():
    cfg = parse_config(["--config", "fashion_mnist_lt", "--lr", "0.1", "--exit-stages", "[-4, -2]", "--epochs=3"])
    assert cfg.dataset == "fashion_mnist_lt" and cfg.backbone == "resnet18"  # from the preset
    assert cfg.lr == 0.1 and cfg.exit_stages == [-4, -2] and cfg.epochs == 3  # from the command line
    stage2 = parse_config(["--config", "fashion_mnist_lt", "--tau-grid", "[1, 2]"], command=STAGE2)
    assert stage2.tau_grid == [1, 2]


def test_values_are_parsed_as_yaml_and_coerced_to_the_field_type():
    cfg = parse_config(["--pretrained", "true", "--backbone_lr", "null", "--weight_decay", "1e-4", "--epochs", "2.0"])
    assert cfg.pretrained is True and cfg.backbone_lr is None
    assert cfg.weight_decay == pytest.approx(1e-4) and isinstance(cfg.epochs, int) and cfg.epochs == 2


@pytest.mark.parametrize("argv, message", [
    (["--lrr", "0.1"], "did you mean '--lr'"),
    (["--weight_decy", "0.1"], "did you mean '--weight_decay'"),
    (["--epochs", "1.5"], "epochs in the command line should be int"),
    (["--sampler", "balanced"], "is not one of ['instance', 'class_balanced', 'sqrt']"),
    (["--config", "fashion_mnst_lt"], "did you mean 'fashion_mnist_lt'"),
    (["--seed", "null"], "seed in the command line cannot be null"),
    (["stray"], "options take the form --key value"),
])
def test_errors_name_the_problem_and_the_fix(argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(argv)
    assert message in str(exc.value)


def test_yaml_file_with_base_preset_and_unknown_key(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("base: fashion_mnist_lt\nepochs: 4\n")
    cfg = parse_config(["--config", str(good)])
    assert cfg.epochs == 4 and cfg.backbone == "resnet18"
    bad = tmp_path / "typo.yaml"
    bad.write_text("base: fashion_mnist_lt\nmixup_alpah: 0.2\n")
    with pytest.raises(ConfigError, match="unknown config key 'mixup_alpha'|did you mean 'mixup_alpha'"):
        parse_config(["--config", str(bad)])


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(["--config", "fashion_mnist_lt", "--epochs", "7", "--exit_stages", "[-4, -2]"])
    cfg.save(tmp_path / "config.yaml")
    assert RunConfig(**load_run_config(tmp_path / "config.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["epochs"] == 7


def test_base_config_is_overridden_by_preset_and_cli():
    cfg = parse_config(["--epochs", "5"], base={"epochs": 100, "lr": 0.3, "backbone": "test_resnet"})
    assert (cfg.epochs, cfg.lr, cfg.backbone) == (5, 0.3, "test_resnet")


def test_every_shipped_preset_loads():
    assert "fashion_mnist_lt" in preset_names()
    for name in preset_names():
        parse_config(["--config", name])


def test_yaml_syntax_errors_give_file_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("epochs: 3\nlr: [0.1\nseed: 1\n")
    with pytest.raises(ConfigError, match=rf"{bad}:3:5: YAML syntax error"):
        parse_config(["--config", str(bad)])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs in the command line must be at least 1, got 0"),
    (["--epochs", "-3"], "epochs in the command line must be at least 1, got -3"),
    (["--lerning_rate", "0.1"], "did you mean '--lr' (alias --learning_rate)?"),
    (["--imb_factor", "0.5"], "imb_factor in the command line must be n_max/n_min, at least 1"),
])
def test_bad_values_and_typos_get_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(argv)
    assert message in str(exc.value)


def test_hf_example_names_and_bare_booleans(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = parse_config(["--learning_rate", "0.3", "--num_train_epochs", "7", "--gradient_accumulation_steps", "2",
                        "--per_device_train_batch_size", "16", "--push_to_hub", "--with_tracking",
                        "--per_device_eval_batch_size", "32", "--dataset_name", "me/data"])
    assert (cfg.lr, cfg.epochs, cfg.grad_accum_steps) == (0.3, 7, 2)
    assert cfg.batch_size == 16 * 2 * 2 and cfg.per_device_train_batch_size is None  # global batch, resolved
    assert cfg.push_to_hub is True and cfg.report_to == "all" and cfg.eval_batch_size == 32
    assert cfg.hub_dataset_id == "me/data"
    assert parse_config(["--push_to_hub", "false", "--hub_private"]).push_to_hub is False


def test_each_command_takes_only_its_own_flags():
    from cadel_modeling.config import EVALUATE
    with pytest.raises(ConfigError, match="--mixup_alpha is not a flag of stage 2 .*keep the settings the model was"):
        parse_config(["--mixup_alpha", "0.2"], command=STAGE2)
    with pytest.raises(ConfigError, match="--tau_grid is not a flag of evaluation"):
        parse_config(["--tau_grid", "[1]"], command=EVALUATE)


@pytest.mark.parametrize("module, most, present, absent", [
    ("train_stage1", 150, ["--mixup_alpha", "--lr", "--learning_rate]", "--report_to", "Input:"],
     ["--tau_grid", "--eval_split"]),
    ("train_stage2", 100, ["--tau_grid", "--stage1_dir", "--select_inference_rule", "--report_to"],
     ["--mixup_alpha", "--backbone", "--lr ", "--epochs"]),
    ("evaluate", 100, ["--eval_model", "--eval_split", "--eval_exits"], ["--mixup_alpha", "--tau_grid", "--lr "]),
])
def test_help_lists_only_the_commands_groups_and_is_short(module, most, present, absent):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", f"cadel_modeling.{module}", "--help"], capture_output=True,
                         text=True, timeout=120, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) <= most, len(lines)
    assert all(flag in out.stdout for flag in present), [f for f in present if f not in out.stdout]
    assert not any(flag in out.stdout for flag in absent), [f for f in absent if f in out.stdout]
    assert "    accelerate launch -m cadel_modeling." in out.stdout  # the docstring's layout is kept


def test_dataset_level_presets_resolve_to_the_papers_headline_rows():
    from cadel_modeling.config.paper import paper_result
    expected = {"imagenet_lt": ("imagenet_lt_resnet50", "resnet50", 58.5),
                "inat18": ("inat18_resnet50", "resnet50", 73.5),
                "places_lt": ("places_lt_resnet152", "resnet152.tv_in1k", 41.4),
                "imagenet_lt_vit": ("imagenet_lt_vit_b16_224", "vit_base_patch16_224", 61.7),
                "inat18_vit": ("inat18_vit_b16_224", "vit_base_patch16_224", 76.2),
                "places_lt_vit": ("places_lt_vit_b16_224", "vit_base_patch16_224", 46.6)}
    for name, (row, backbone, top1) in expected.items():
        alias, full = parse_config(["--config", name]), parse_config(["--config", row])
        assert alias.backbone == backbone and alias.output_dir == f"runs/{name}"
        assert {**alias.to_dict(), "output_dir": None} == {**full.to_dict(), "output_dir": None}
        assert paper_result(alias.dataset, alias.backbone, alias.image_size)["accuracy"] == top1
