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
