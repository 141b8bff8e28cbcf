"""Presets, YAML files and command-line overrides: precedence, types, and errors that name the fix."""
import re

import pytest
import yaml

from cadel_modeling.config import (
    EVALUATE,
    STAGE1,
    STAGE2,
    ConfigError,
    RunConfig,
    load_run_config,
    parse_config,
    preset_names,
)


def test_stage1_without_config_runs_the_demo_preset():
    assert parse_config([]) == parse_config(["--config", "fashion_mnist_lt"])
    assert parse_config([]) != RunConfig()  # not the built-in ResNet-50 at 224 px for 200 epochs
    assert parse_config([], command=STAGE2) == RunConfig()  # stage 2 and evaluation start from the model's config


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
    (["--epochs", "1.5"], "epochs in the command line should be a whole number, got 1.5"),
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


@pytest.mark.parametrize("argv, message", [
    (["--select_rule_confidence", "1.5"], "select_rule_confidence in the command line must be a fraction between 0 "
                                          "and 1 (0.95: ahead in 95% of resamples), got 1.5"),
    (["--select_rule_resamples", "0"], "select_rule_resamples in the command line must be at least 1"),
])
def test_bad_rule_choice_settings_get_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(argv, command=STAGE2)
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

    with pytest.raises(ConfigError, match="--mixup_alpha is not a flag of stage 2 .*keep the settings the model was"):
        parse_config(["--mixup_alpha", "0.2"], command=STAGE2)
    with pytest.raises(ConfigError, match="--tau_grid is not a flag of evaluation"):
        parse_config(["--tau_grid", "[1]"], command=EVALUATE)


@pytest.mark.parametrize("module, most, present, absent", [
    ("train_stage1", 160, ["--mixup_alpha", "--lr", "--learning_rate]", "--report_to", "Input:"],
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


@pytest.mark.parametrize("argv, command, message", [
    (["--lrr=0.1"], STAGE1, "unknown option '--lrr=0.1'; did you mean '--lr' (alias --learning_rate)?"),
    (["--tau-grid=[1]"], STAGE1, "--tau_grid is not a flag of stage 1 (it is used by stage 2); remove it"),
    (["--eval_exits", "[1]"], STAGE1, "--eval_exits is not a flag of stage 1 (it is used by stage 2, evaluation); "
                                      "remove it"),
    (["--learning_rate", "0.1"], STAGE2, "--lr is not a flag of stage 2 (it is used by stage 1); stage 2 and "
                                         "evaluation keep the settings the model was trained with"),
    (["--tau_grid", "[1]"], STAGE1, "--tau_grid is not a flag of stage 1 (it is used by stage 2); remove it"),
    (["--mixup-alpha", "0.2"], STAGE2, "--mixup_alpha is not a flag of stage 2 (it is used by stage 1); stage 2 and "
                                       "evaluation keep the settings the model was trained with"),
    (["--tau_grid", "[1]"], EVALUATE, "--tau_grid is not a flag of evaluation (it is used by stage 2); stage 2 and "
                                      "evaluation keep the settings the model was trained with"),
])
def test_flag_errors_word_for_word(argv, command, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(argv, command=command)
    assert str(exc.value) == message


def test_closest_flag_always_suggests_something_when_there_are_flags():
    from cadel_modeling.config.parsing import closest_flag
    assert closest_flag("lerning_rate", ["lr", "epochs"]) == "'--lr' (alias --learning_rate)"
    assert closest_flag("zzzzz", ["lr", "epochs"]) == "'--epochs' (alias --num_train_epochs)"  # below the 0.5 cutoff
    assert closest_flag("epoch", ["lr", "epochs"]) == "'--epochs' (alias --num_train_epochs)"
    assert closest_flag("seeed", ["seed", "lr"]) == "'--seed'"
    assert closest_flag("x", []) == ""


def test_a_saved_run_config_with_a_bad_key_or_value_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_run_config(path)
    assert str(exc.value) == f"unknown config key 'lrr' in {path}; did you mean 'lr' (alias --learning_rate)?"
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError) as exc:
        load_run_config(path)
    assert str(exc.value) == f"epochs in {path} should be a whole number, got 'many'"


def test_per_device_batch_and_tracking_switches(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_config(["--per_device_train_batch_size", "8"]).batch_size == 8              # one process
    assert parse_config(["--per_device_train_batch_size", "8", "--grad_accum_steps", "3"]).batch_size == 24
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_config(["--per_device_train_batch_size", "8"]).batch_size == 32
    assert parse_config(["--with_tracking", "--report_to", "tensorboard"]).report_to == "tensorboard"
    assert parse_config(["--with_tracking"]).report_to == "all"
    assert parse_config([]).report_to == "none"


@pytest.mark.parametrize("key, value, expected", [
    ("hflip", "true", True), ("hflip", "False", False), ("hflip", "YES", True), ("hflip", "no", False),
    ("hflip", "1", True), ("hflip", "0", False), ("hflip", True, True),
    ("epochs", 3, 3), ("epochs", 2.0, 2),
    ("lr", "1e-4", 1e-4), ("lr", 1, 1.0), ("backbone_lr", "0.5", 0.5), ("backbone_lr", None, None),
    ("tau_grid", 0.5, [0.5]), ("tau_grid", [0, 1], [0, 1]), ("exit_blocks", None, None),
    ("backbone_kwargs", {"a": 1}, {"a": 1}),
    ("backbone", 18, "18"), ("backbone", 1.5, "1.5"), ("run_name", None, None),
    ("imb_factor", "none", None), ("imb_factor", "None", None), ("n_max", "null", None), ("run_name", "none", "none"),
    ("checkpointing_steps", "epoch", None), ("scheduler", "cosine", "warmup_cosine"),
])
def test_coerce_converts_each_kind(key, value, expected):
    from cadel_modeling.config.parsing import coerce
    got = coerce(key, value, "here")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key, value, message", [
    ("hflip", "maybe", "hflip in here should be true or false, got 'maybe'"),
    ("hflip", 1, "hflip in here should be true or false, got 1"),
    ("epochs", 2.5, "epochs in here should be a whole number, got 2.5"),
    ("epochs", True, "epochs in here should be a whole number, got True"),
    ("lr", "fast", "lr in here should be a number, got 'fast'"),
    ("lr", True, "lr in here should be a number, got True"),
    ("tau_grid", True, "tau_grid in here should be a list such as [1, 2], got True"),
    ("tau_grid", {"a": 1}, "tau_grid in here should be a list such as [1, 2], got {'a': 1}"),
    ("backbone_kwargs", [1], "backbone_kwargs in here should be a mapping such as {key: value}, got [1]"),
    ("backbone", True, "backbone in here should be text, got True"),
    ("backbone", [1], "backbone in here should be text, got [1]"),
    ("seed", None, "seed in here cannot be null"),
    ("seed", "none", "seed in here should be a whole number, got 'none'"),
    ("backbone_lr", "x", "backbone_lr in here should be a number, or null for none, got 'x'"),
    ("n_max", "many", "n_max in here should be a whole number, or null for none, got 'many'"),
])
def test_coerce_refuses_values_of_another_kind(key, value, message):
    from cadel_modeling.config.parsing import coerce
    with pytest.raises(ConfigError) as exc:
        coerce(key, value, "here")
    assert str(exc.value) == message


@pytest.mark.parametrize("command", [STAGE1, STAGE2, EVALUATE])
def test_help_shows_every_flag_with_its_kind_help_default_and_aliases(command):
    import dataclasses

    from cadel_modeling.config.parsing import GROUPS, build_parser, fields_of
    text = " ".join(build_parser(command, "What this command does.").format_help().split())
    assert "[--config PRESET|FILE] [--KEY VALUE ...] What this command does." in text
    assert ("-c PRESET|FILE, --config PRESET|FILE a preset (imagenet_lt, inat18, places_lt = the paper's CNN rows; "
            "*_vit = its ViT-B/16 224 rows; --list_presets shows all) or a YAML file; flags override it; --help "
            "shows its values") in text
    assert ("(default: the demo preset fashion_mnist_lt)" in text) == (command == STAGE1)
    assert "--list_presets list the presets with their paper numbers" in text
    assert "--debug show the traceback of an error" in text
    kinds = {"bool": "[BOOL]", "int": "INT", "float": "FLOAT", "str": "STR", "list": "LIST", "dict": "DICT"}
    for name, fld in fields_of(command).items():
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        notes = ([f"default {default}"] if default not in (None, {}, "") else []) + \
            [f"alias --{a}" for a in fld.metadata["aliases"]]
        choices = fld.metadata["choices"]
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else kinds[str(fld.type).replace(
            "Optional[", "").rstrip("]")]
        expected = f"--{name} {metavar} {fld.metadata['help']}" + (f" [{'; '.join(notes)}]" if notes else "")
        # the help ends there: the next flag or group title follows (no stray brackets or text)
        assert re.search(re.escape(" ".join(expected.split())) + r"(?= --| [A-Z][A-Za-z0-9 -]*: |$)", text), name
        assert f"--{name.replace('_', '-')} " not in text or "_" not in name   # hidden spellings stay hidden
        group = fld.metadata["group"]
        assert f"{group}: {GROUPS[group][0]}:" in text


def test_hidden_spellings_are_accepted_and_abbreviations_are_not():
    cfg = parse_config(["--learning-rate", "0.3", "--num-train-epochs", "4", "--weight-decay", "0.01", "-c",
                        "fashion_mnist_lt", "--hflip"])
    assert (cfg.lr, cfg.epochs, cfg.weight_decay, cfg.hflip) == (0.3, 4, 0.01, True)
    with pytest.raises(ConfigError, match="unknown option '--epoch'"):
        parse_config(["--epoch", "3"])
    with pytest.raises(SystemExit):   # a flag that takes a value does not take none
        parse_config(["--epochs"])


@pytest.mark.parametrize("columns, width", [(80, 120), (140, 140), (300, 160)])
def test_help_width_follows_the_terminal_between_120_and_160(monkeypatch, columns, width):
    import os

    from cadel_modeling.config import parsing
    monkeypatch.setattr(parsing.shutil, "get_terminal_size", lambda: os.terminal_size((columns, 40)))
    formatter = parsing._HelpFormatter("prog")
    assert (formatter._prog, formatter._width, formatter._max_help_position) == ("prog", width, 32)


def test_help_description_and_config_sources_in_messages(capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_config(["--help"], description="Trains the cascade.")
    assert "\nTrains the cascade.\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    assert capsys.readouterr().out.split("\n")[1:3] == ["", "options:"]     # no description: none shown
    with pytest.raises(ConfigError) as exc:
        parse_config([], base={"lrr": 0.1})
    assert str(exc.value) == "unknown config key 'lrr' in the base config; did you mean 'lr' (alias --learning_rate)?"
    preset = tmp_path / "mine.yaml"
    preset.write_text("lr: fast\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(["--config", str(preset)])
    assert str(exc.value) == f"lr in {preset} should be a number, got 'fast'"
    preset.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(["--config", str(preset)])
    assert str(exc.value).startswith(f"unknown config key 'lrr' in {preset}; ")


def test_hidden_bool_spellings_take_no_value():
    cfg = parse_config(["--push-to-hub", "--hub-private"])
    assert cfg.push_to_hub is True and cfg.hub_private is True


def _help_text(argv, command=STAGE1):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_config(argv + ["--help"], command=command)
    return " ".join(out.getvalue().split())


def test_help_with_a_preset_shows_the_values_the_run_will_use():
    text = _help_text(["--config", "imagenet_lt_vit"])
    assert "--backbone STR timm model name [default vit_base_patch16_224]" in text
    assert "--lr FLOAT learning rate (not scaled by the batch size, as the original) [default 0.0005;" in text
    demo = _help_text([])  # no --config: the demo preset's values, as the run will use them
    assert "--image_size INT training / evaluation crop size [default 32]" in demo
    assert "--backbone STR timm model name [default resnet18]" in demo
    assert "[default 30; alias --num_train_epochs]" in demo
    assert "--tau_grid LIST tau values searched on validation [default [0.0, 0.25," in _help_text(
        ["-c", "fashion_mnist_lt"], command=STAGE2)


@pytest.mark.parametrize("argv, dataset", [
    (["--dataset", "imagefolder", "--data_dir", "/data/mine"], "imagefolder"),
    (["--dataset_name", "someone/cats"], "hub"),
    (["--dataset", "hub", "--dataset_name", "imagefolder", "--data_dir", "/data/mine"], "hub"),
    (["--train_dir", "/data/mine/train"], "imagefolder"),
    (["--dataset", "cifar100_lt"], "cifar100_lt"),
])
def test_a_presets_dataset_settings_stay_with_its_dataset(argv, dataset):
    cfg = parse_config(["--config", "fashion_mnist_lt"] + argv)
    assert cfg.dataset == dataset
    assert (cfg.n_max, cfg.imb_factor, cfg.val_per_class) == (None, None, 20)  # the built-in defaults: data as found
    assert cfg.dropped_preset_keys == {"n_max": 500, "imb_factor": 100.0}  # val_per_class 20 is the default anyway
    assert (cfg.backbone, cfg.image_size, cfg.epochs, cfg.lr) == ("resnet18", 32, 30, 0.05)  # the recipe stays
    from cadel_modeling.config.parsing import dropped_keys_note
    assert dropped_keys_note(cfg) == (f"not applied to {dataset} data: the preset's settings of its own dataset "
                                      f"(n_max=500, imb_factor=100.0); pass them as flags to apply them here. "
                                      f"The recipe's mixup_alpha=0.5, epochs=30, lr=0.05 were chosen on the preset's "
                                      f"own data and may not transfer (mixup first, docs/presets.md): check them on "
                                      f"this data with cadel-compare")


def test_explicit_dataset_flags_and_the_presets_own_data_keep_them():
    cfg = parse_config(["--config", "fashion_mnist_lt", "--dataset", "imagefolder", "--data_dir", "x",
                        "--imb_factor", "10"])
    assert (cfg.imb_factor, cfg.n_max, cfg.dropped_preset_keys) == (10.0, None, {"n_max": 500})
    same = parse_config(["--config", "fashion_mnist_lt", "--dataset", "fashion_mnist_lt", "--data_dir", "/idx"])
    assert (same.n_max, same.imb_factor, same.dropped_preset_keys) == (500, 100.0, None)  # its own data, elsewhere
    cifar = parse_config(["--config", "cifar10_lt", "--dataset", "cifar100_lt"])
    assert (cifar.num_classes, cifar.imb_factor) == (None, None)  # not 10 classes; cifar100_lt's builder default
    explicit = parse_config(["--config", "cifar10_lt", "--dataset", "cifar100_lt", "--num_classes", "100"])
    assert explicit.num_classes == 100


def test_a_yaml_file_for_one_image_folder_does_not_follow_to_another(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: fashion_mnist_lt\ndataset: imagefolder\ndata_dir: /data/a\nn_max: 40\nimb_factor: 5\n")
    assert parse_config(["--config", str(mine)]).n_max == 40
    other = parse_config(["--config", str(mine), "--data_dir", "/data/b"])
    assert (other.n_max, other.imb_factor) == (None, None)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar10_lt", "--dataset_name", "x/y"], "--dataset_name reads hub data but --dataset is "
                                                             "cifar10_lt; drop one of the two"),
    (["--validation_dir", "v"], "--validation_dir needs --train_dir (the training images' folder)"),
    (["--imb_factor", "lots"], "imb_factor in the command line should be a number, or null for none, got 'lots'"),
])
def test_dataset_flag_conflicts_get_one_line(argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(argv)
    assert str(exc.value) == message


def test_hf_example_names_are_aliases_of_cadels_keys():
    cfg = parse_config(["--train_dir", "a/train", "--validation_dir", "a/val", "--image_column_name", "img",
                        "--label_column_name", "y", "--mixed_precision", "bf16", "--lr_scheduler_type", "cosine",
                        "--checkpointing_steps", "epoch", "--logging_steps", "7", "--save_total_limit", "3"])
    assert (cfg.dataset, cfg.train_dir, cfg.validation_dir) == ("imagefolder", "a/train", "a/val")
    assert (cfg.image_column, cfg.label_column, cfg.mixed_precision) == ("img", "y", "bf16")
    assert (cfg.scheduler, cfg.checkpointing_steps, cfg.log_every, cfg.keep_last_checkpoints) == \
        ("warmup_cosine", None, 7, 3)
    assert parse_config(["--checkpointing_steps", "100"]).checkpointing_steps == 100
    with pytest.raises(ConfigError, match=r"scheduler='linear' in the command line is not one of"):
        parse_config(["--lr_scheduler_type", "linear"])


@pytest.mark.parametrize("flag, message", [
    ("--trust_remote_code", "--trust_remote_code has no counterpart in cadel: cadel builds its models from timm names "
                            "and runs no code from a model repository"),
    ("--max_train_steps", "--max_train_steps has no counterpart in cadel: cadel trains whole epochs (schedule, "
                          "validation and best-model choice are per epoch); use --epochs"),
    ("--num_warmup_steps", "--num_warmup_steps has no counterpart in cadel: cadel's warmup is counted in epochs; use "
                           "--warmup_epochs with --scheduler warmup_cosine"),
    ("--model_name_or_path", "--model_name_or_path has no counterpart in cadel: the backbone is a timm model name "
                             "(--backbone, with --pretrained for timm's weights); to start from a cadel model use "
                             "--init_from"),
])
def test_hf_names_cadel_has_no_concept_for_say_so(flag, message):
    with pytest.raises(ConfigError) as exc:
        parse_config([flag, "1"])
    assert str(exc.value) == message


def test_mixed_precision_reaches_the_accelerator(monkeypatch):
    from cadel_modeling.stages import frame, stage1
    seen = {}

    def fake_accelerator(**kwargs):  # accelerate's state is per process: look at the request, build nothing
        seen.update(kwargs)
        raise InterruptedError

    monkeypatch.setattr(frame, "make_accelerator", fake_accelerator)
    for argv, expected in ((["--mixed_precision", "bf16"], "bf16"), ([], None)):  # None: accelerate's config
        with pytest.raises(InterruptedError):
            stage1.run(parse_config(argv))
        assert seen["mixed_precision"] == expected


# -- one source per list: each choice list of the schema names exactly what its registry builds ----------------------

def test_dataset_choices_are_the_registered_builders():
    from cadel_modeling.config.schema import FIELDS
    from cadel_modeling.data.registry import DATASET_BUILDERS
    assert sorted(FIELDS["dataset"].metadata["choices"]) == sorted(DATASET_BUILDERS)


def test_base_loss_choices_are_the_losses_plus_auto():
    from cadel_modeling.config.schema import FIELDS
    from cadel_modeling.training.losses import BASE_LOSSES
    assert tuple(FIELDS["base_loss"].metadata["choices"]) == ("auto", *BASE_LOSSES)


def test_the_loss_a_config_asks_for():
    from cadel_modeling.training.losses import CascadeLoss
    cfg = RunConfig(backbone="test_vit", base_loss="auto", bins=3, gamma=0.5, base_weight=1.5,
                    weight_mode="batch_scalar_legacy")
    loss = CascadeLoss.from_config(cfg, [5, 1])
    assert (loss.bins, loss.gamma, loss.base_weight, loss.weight_mode, loss.base_loss) == \
        (3, 0.5, 1.5, "batch_scalar_legacy", "bce")  # auto resolves to the ViT's BCE


def test_a_dataset_trained_without_color_jitter_keeps_it_off():
    from cadel_modeling.data.base import LongTailedData
    assert LongTailedData(None, {}, ["a"]).train_color_jitter(0.4) == 0.4
    assert LongTailedData(None, {}, ["a"], color_jitter=0.0).train_color_jitter(0.4) == 0.0
