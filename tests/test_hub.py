"""Hub integration, offline: Auto-class round trip, pipeline scores, image processor, model card, upload set,
failing uploads and Hub ids served from the local cache. A tiny fake run stands in for training."""
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cadel_modeling.config import RunConfig
from cadel_modeling.config.paper import paper_result
from cadel_modeling.hub.model_card import build_model_card
from cadel_modeling.hub.publish import PushError, files_to_upload, push_to_hub, upload_bytes
from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.modeling.auto_classes import register_auto_classes
from cadel_modeling.modeling.factory import save_model
from cadel_modeling.modeling.locate import find_model_dir, run_config_path
from cadel_modeling.modeling.processing import build_image_processor
from cadel_modeling.push_to_hub import main as push_main

COUNTS = [200, 120, 80, 50, 30, 20, 12, 8, 6, 5]
TAU = 1.0
MAIN = "last rule, tau=1"
TEST_MAIN = {"accuracy": 0.6123, "many_accuracy": 0.9, "medium_accuracy": 0.5531, "few_accuracy": 0.3012,
             "top5_accuracy": 0.95, "ece": 0.05, "nll": 1.234, "macro_f1": 0.6}
VAL_MAIN = {"accuracy": 0.58, "many_accuracy": 0.85, "medium_accuracy": 0.5, "few_accuracy": 0.25}
STAGE1_COMMAND = "train_stage1.py --config fashion_mnist_lt --backbone test_resnet --epochs 2 --data_dir /home/me/data"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_results(folder: Path, split: str, main: dict):
    write_json(folder / "results.json", {"split": split, "tau": TAU, "main": MAIN, "results": {
        "last rule, tau=0": {**main, "accuracy": main["accuracy"] - 0.1},
        MAIN: {**main, "per_class_accuracy": [0.5] * 10},
        "exit 1 alone, tau=1": {**main, "accuracy": 0.2}}})
    (folder / "per_class.csv").write_text("class_id,class_name,train_count,shot,accuracy\n0,c0,200,many,0.5\n")
    Image.new("RGB", (8, 8)).save(folder / "per_class_accuracy.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A stage-1 run folder with a stage-2 model (tau = 1) evaluated on test (by stage 2) and val (by evaluate.py)."""
    out = tmp_path_factory.mktemp("runs") / "tiny_lt"
    cfg = RunConfig(output_dir=str(out), backbone="test_resnet", image_size=32, augmentation="small",
                    aux_head="light", epochs=2, seed=3, weight_mode="per_sample", tau_grid=[0.5, 1.0],
                    data_dir="/home/me/data", hub_token="hf_secret")
    model_cfg = CadelConfig(backbone="test_resnet", num_labels=10, image_size=32, aux_head="light",
                            class_counts=COUNTS, id2label={i: f"class_{i}" for i in range(10)},
                            label2id={f"class_{i}": i for i in range(10)})
    torch.manual_seed(0)
    model = CadelForImageClassification(model_cfg).eval()
    cfg.save(out / "config.yaml")
    write_json(out / "run_info.json", {"command": STAGE1_COMMAND, "num_processes": 1, "mixed_precision": "no",
                                       "versions": {"torch": torch.__version__}, "class_counts": COUNTS,
                                       "data_notes": ["a tiny fake run"]})
    (out / "train_log.jsonl").write_text('{"epoch": 1, "val_top1": 0.4}\n{"epoch": 2, "val_top1": 0.5}\n')
    write_json(out / "stage1_summary.json", {"best_val_top1": 0.5, "best_epoch": 2, "epochs": 2})
    save_model(model, out / "best_model", cfg, cfg.augmentation)
    stage2 = out / "stage2_logit_adjustment"
    model.config.tau = TAU
    save_model(model, stage2 / "model", cfg, cfg.augmentation)
    write_json(stage2 / "stage2_results.json", {"method": "logit_adjustment", "tau": TAU, "tau_selected_on": "val",
                                                "val_sweep": [{"tau": 0.5, "top1": 0.55}, {"tau": 1.0, "top1": 0.58}]})
    write_results(stage2 / "eval_test", "test", TEST_MAIN)
    write_results(stage2 / "model" / "eval_val", "val", VAL_MAIN)
    return SimpleNamespace(dir=out, model_dir=stage2 / "model", model=model)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "README.md"}


class FakeApi:
    """Records what would be uploaded; ``fail`` makes the commit raise like an unreachable Hub."""

    calls = []
    fail = False

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch, exist_ok))

    def create_commit(self, repo_id, operations, commit_message, revision=None):
        if FakeApi.fail:
            raise ConnectionError("the Hub cannot be reached")
        uploaded = {op.path_in_repo: op.path_or_fileobj for op in operations}
        assert all(isinstance(b, bytes) for b in uploaded.values())
        FakeApi.calls.append(("create_commit", repo_id, uploaded, revision, commit_message))


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub
    FakeApi.calls, FakeApi.fail = [], False
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_auto_class_round_trip_gives_identical_logits(run):
    from transformers import AutoConfig, AutoModelForImageClassification
    register_auto_classes()
    loaded = AutoModelForImageClassification.from_pretrained(str(run.model_dir)).eval()
    assert isinstance(loaded, CadelForImageClassification)
    assert AutoConfig.from_pretrained(str(run.model_dir)).tau == TAU
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, run.model(x).logits)


def test_pipeline_scores_are_softmax_of_tau_adjusted_logits(run):
    from transformers import pipeline
    register_auto_classes()
    classifier = pipeline("image-classification", model=str(run.model_dir))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    predictions = classifier(image, top_k=10)
    pixel_values = classifier.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        raw_last_exit = run.model.exit_logits(pixel_values)[-1][0].double().numpy()
    adjusted = raw_last_exit - TAU * np.log(np.asarray(COUNTS) / sum(COUNTS))  # independent of adjust_logits
    expected = np.exp(adjusted - adjusted.max()) / np.exp(adjusted - adjusted.max()).sum()
    assert predictions[0]["label"] == f"class_{expected.argmax()}"
    got = {p["label"]: p["score"] for p in predictions}
    np.testing.assert_allclose([got[f"class_{i}"] for i in range(10)], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("augmentation", ["imagenet", "small"])
def test_image_processor_reproduces_the_evaluation_transform(augmentation, tmp_path):
    from transformers import AutoImageProcessor

    from cadel_modeling.data.transforms import build_transform
    config = SimpleNamespace(image_size=32, image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.6, 0.7])
    build_image_processor(32, config.image_mean, config.image_std, augmentation).save_pretrained(str(tmp_path))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 61), dtype=np.uint8))  # grayscale
    reference = build_transform(False, 32, config.image_mean, config.image_std, augmentation)(image)
    pil = AutoImageProcessor.from_pretrained(str(tmp_path), backend="pil")(images=image, return_tensors="pt")
    torch.testing.assert_close(pil["pixel_values"][0], reference, atol=1e-6, rtol=0)
    fast = AutoImageProcessor.from_pretrained(str(tmp_path))(images=image, return_tensors="pt")
    torch.testing.assert_close(fast["pixel_values"][0], reference, atol=0.05, rtol=0)  # torch resize, same geometry


def test_model_card_parses_and_holds_what_the_hub_reads(run, tmp_path):
    from huggingface_hub import ModelCard
    path = tmp_path / "README.md"
    build_model_card(run.model_dir, "someone/tiny_lt", license="mit", files=["config.json"]).save(path)
    card = ModelCard.load(path)
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-classification", "mit")
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and data.base_model is None
    assert {"cadel", "long-tailed", "timm", "test_resnet"} <= set(data.tags)
    measured = {(r.dataset_split, r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    configs = {"accuracy": None, "many_accuracy": "many-shot", "medium_accuracy": "medium-shot",
               "few_accuracy": "few-shot", "top5_accuracy": "top-5"}
    expected = {("test", "accuracy", configs[k]): round(100 * v, 2) for k, v in TEST_MAIN.items() if k in configs}
    expected.update({("val", "accuracy", configs[k]): round(100 * v, 2) for k, v in VAL_MAIN.items() if k in configs})
    assert measured == expected
    assert all(r.dataset_type == "zalando-datasets/fashion_mnist" for r in data.eval_results)
    assert data.model_name == "tiny_lt"
    text = card.text
    assert f"`{STAGE1_COMMAND}`" in text
    assert "tau = 1 chosen on the val split" in text and "`per_sample`" in text
    assert "- `config.json`: model config" in text
    assert "| test | last rule, tau=1 (main) | 61.2 | 90.0 | 55.3 | 30.1 | 95.0 | 5.0 | 1.234 | 60.0 |" in text
    assert "eval_test/per_class_accuracy.png" in text and "2 epochs" in text and "seed 3" in text
    assert "Paper comparison: n/a" in text
    assert 'pipeline("image-classification", model="someone/tiny_lt", trust_remote_code=True)' in text
    assert "pip install cadel" in text


def test_model_card_names_the_base_model(run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(run.model_dir, model_dir)
    RunConfig(backbone="test_resnet", init_from="someone/parent-model").save(model_dir / "run_config.yaml")
    assert build_model_card(model_dir).data.base_model == "someone/parent-model"
    RunConfig(backbone="resnet50.a1_in1k", pretrained=True, dataset="hub",
              hub_dataset_id="me/my-data").save(model_dir / "run_config.yaml")
    data = build_model_card(model_dir).data
    assert data.base_model == "timm/resnet50.a1_in1k" and data.datasets == ["me/my-data"]


def test_model_card_compares_with_the_papers_number(run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(run.model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "backbone": "resnet50.a1_in1k", "image_size": 224}))
    cfg = RunConfig(dataset="imagenet_lt", backbone="resnet50.a1_in1k")
    cfg.save(model_dir / "run_config.yaml")
    text = build_model_card(model_dir).text
    assert "| paper | original CADEL README | 58.5 | 67.5 | 55.6 | 43.2 | – |" in text
    assert "58.0% top-1 on the val split against 58.5% in the original README (-0.5 points)" in text  # no test eval


def test_model_card_states_the_exit_rule_decision_and_its_evidence(run, tmp_path):
    folder = tmp_path / "tiny_lt"
    shutil.copytree(run.dir, folder)
    results = folder / "stage2_logit_adjustment" / "stage2_results.json"
    evidence = {"candidate": "grid", "candidate_weights": [0.3, 0.0, 0.7], "candidate_tau": 0.75,
                "candidate_val_top1": 0.62, "model_rule": "last exit (CNN rule)", "model_rule_tau": 1.0,
                "model_rule_val_top1": 0.605, "gain": 0.015, "fraction_ahead": 0.723, "resamples": 1000, "seed": 0,
                "val_size": 200, "threshold": 0.95, "strong": False}
    chosen = {"rule": "last", "exit_weights": None, "tau": 1.0, "selected_on": "val", "moved": False,
              "source": "last exit (CNN rule)", "val_top1": 0.605}
    write_json(results, {**json.loads(results.read_text()), "rule_evidence": evidence, "selected_rule": chosen})
    text = build_model_card(folder / "stage2_logit_adjustment" / "model").text
    assert ("- Exit rule (`--select_inference_rule`, beyond the paper): kept the model's own rule; the best on val "
            "(learned exit weights 0.30/0.00/0.70 at tau = 0.75) scored +1.50 points over the model's last exit (CNN "
            "rule) at tau = 1 on 200 val images and was ahead in 72.3% of 1000 paired bootstrap resamples (95% "
            "needed): too weak evidence\n") in text
    write_json(results, {**json.loads(results.read_text()), "selected_rule": None})  # not asked for: no line
    assert "Exit rule" not in build_model_card(folder / "stage2_logit_adjustment" / "model").text


def test_every_paper_preset_finds_its_paper_number():
    from cadel_modeling.config import parse_config, preset_names
    found = {}
    for preset in preset_names():
        cfg = parse_config(["--config", preset])
        found[preset] = paper_result(cfg.dataset, cfg.backbone, cfg.image_size)
    assert {p for p, r in found.items() if r is not None} == {
        "imagenet_lt_resnet50", "imagenet_lt_resnext50", "imagenet_lt_vit_b16_224", "imagenet_lt_vit_b16_384",
        "inat18_resnet50", "inat18_vit_b16_224", "inat18_vit_b16_384",
        "places_lt_resnet152", "places_lt_vit_b16_224", "places_lt_vit_b16_384",
        "imagenet_lt", "inat18", "places_lt", "imagenet_lt_vit", "inat18_vit", "places_lt_vit"}  # dataset-level names
    assert found["inat18_vit_b16_384"]["accuracy"] == 82.7 and found["places_lt_resnet152"]["accuracy"] == 41.4
    assert found["imagenet_lt"]["accuracy"] == 58.5 and found["inat18"]["accuracy"] == 73.5
    assert found["places_lt"]["accuracy"] == 41.4 and found["imagenet_lt_vit"]["accuracy"] == 61.7


def test_paper_results_lookup():
    assert paper_result("imagenet_lt", "resnet50", 224)["accuracy"] == 58.5
    assert paper_result("imagenet_lt", "resnext50_32x4d", 224)["few_accuracy"] == 44.0
    assert paper_result("inat18", "vit_base_patch16_384.mae", 384)["accuracy"] == 82.7
    assert paper_result("places_lt", "resnet152", 224) == {"many_accuracy": None, "medium_accuracy": None,
                                                           "few_accuracy": None, "accuracy": 41.4}
    assert paper_result("fashion_mnist_lt", "resnet50", 224) is None
    assert paper_result("imagenet_lt", "resnet18", 224) is None


def test_files_to_upload_is_complete(run):
    files = files_to_upload(run.dir)  # the run folder resolves to its stage-2 model
    assert set(files) == {
        "config.json", "model.safetensors", "preprocessor_config.json", "run_config.yaml",
        "modeling_cadel.py", "heads.py", "backbones.py",
        "config.yaml", "run_info.json", "train_log.jsonl", "stage1_summary.json", "stage2_results.json",
        "eval_test/results.json", "eval_test/per_class.csv", "eval_test/per_class_accuracy.png",
        "eval_val/results.json", "eval_val/per_class.csv", "eval_val/per_class_accuracy.png"}
    assert files["model.safetensors"] == run.model_dir / "model.safetensors"
    assert files["eval_test/results.json"] == run.dir / "stage2_logit_adjustment" / "eval_test" / "results.json"
    stage1 = files_to_upload(run.dir / "best_model")
    assert stage1["config.json"] == run.dir / "best_model" / "config.json"
    assert "stage2_results.json" not in stage1 and not any(k.startswith("eval_") for k in stage1)


def test_push_uploads_model_card_and_every_file_without_local_paths(run, fake_api):
    assert push_to_hub(run.model_dir, private=True, token="hf_fake", revision="v1",
                       commit_message="first") == "someone/tiny_lt"
    (_, repo_id, private, exist_ok), branch, (_, commit_id, uploaded, revision, message) = fake_api.calls
    assert (repo_id, private, exist_ok, commit_id) == ("tiny_lt", True, True, "someone/tiny_lt")
    assert branch == ("create_branch", "someone/tiny_lt", "v1", True) and (revision, message) == ("v1", "first")
    assert set(uploaded) == set(files_to_upload(run.model_dir)) | {"README.md"}
    assert 'model="someone/tiny_lt"' in uploaded["README.md"].decode()  # the namespaced id after create_repo
    texts = {name: data.decode() for name, data in uploaded.items() if name.endswith((".json", ".yaml", ".md"))}
    leaks = {name for name, text in texts.items() if str(run.dir) in text or "/home/me" in text or "hf_secret" in text}
    assert not leaks, leaks  # no absolute local path and no token in anything uploaded
    run_config = yaml.safe_load(uploaded["run_config.yaml"])
    assert run_config["output_dir"] == "." and run_config["data_dir"] is None and run_config["hub_token"] is None
    assert "--data_dir <local>/data" in texts["run_info.json"]
    assert uploaded["model.safetensors"] == (run.model_dir / "model.safetensors").read_bytes()
    assert not any("checkpoint" in name or "optimizer" in name for name in uploaded)


def test_failed_push_keeps_the_local_results_and_fails(run, fake_api):
    before = snapshot(run.dir)
    fake_api.fail = True
    with pytest.raises(PushError, match="cannot be reached.*retry with: cadel-push-to-hub"):
        push_to_hub(run.dir, "someone/tiny_lt")
    assert snapshot(run.dir) == before
    assert push_main([str(run.dir), "--repo_id", "someone/tiny_lt"]) == PushError.exit_code  # the retry too
    assert snapshot(run.dir) == before
    from huggingface_hub import ModelCard
    assert ModelCard.load(run.model_dir / "README.md").data.model_name == "tiny_lt"


def test_each_model_folder_has_its_own_card_and_no_stage_overwrites_another(run, fake_api):
    stage1_model = run.dir / "best_model"
    push_to_hub(stage1_model, "someone/tiny_lt_stage1")
    stage1_card = (stage1_model / "README.md").read_bytes()
    push_to_hub(run.model_dir, "someone/tiny_lt")
    assert (stage1_model / "README.md").read_bytes() == stage1_card  # stage 2's push left stage 1's card alone
    assert not (run.dir / "README.md").exists()  # the run folder is no model's card
    stage2_card = (run.model_dir / "README.md").read_text()
    assert "- `README.md`: this model card" in stage2_card and "- `model.safetensors`: weights" in stage2_card
    assert "- `stage2_results.json`: stage-2 method and tau sweep" in stage2_card
    assert "stage2_results.json" not in stage1_card.decode() and "tau = 1" in stage2_card
    notes = [line for line in stage2_card.splitlines() if line.startswith("- `")]
    assert not [line for line in notes if line.endswith(": weights") and ".safetensors" not in line]


def test_the_retry_command_repeats_the_push_exactly(run, fake_api):
    import shlex
    settings = {"private": True, "revision": "v2", "commit_message": "two words", "license": "mit"}
    fake_api.fail = True
    with pytest.raises(PushError) as exc:
        push_to_hub(run.model_dir, "someone/tiny_lt", token="hf_secret", **settings)
    command = str(exc.value).split("retry with: ")[1]
    assert "hf_secret" not in command and "--token" not in command
    card = (run.model_dir / "README.md").read_text()
    assert "license: mit" in card
    (run.model_dir / "README.md").unlink()
    fake_api.fail = False
    argv = shlex.split(command)
    assert argv[0] == "cadel-push-to-hub"
    assert push_main(argv[1:]) == 0
    (_, repo_id, private, _), (_, _, branch, _), (_, _, uploaded, revision, message) = fake_api.calls[-3:]
    assert (repo_id, private, branch, revision, message) == ("someone/tiny_lt", True, "v2", "v2", "two words")
    assert (run.model_dir / "README.md").read_text() == card  # the same card as the first attempt (licence too)
    assert uploaded["README.md"] == upload_bytes(run.model_dir / "README.md", run.dir)


def test_hub_id_resolves_offline_from_the_local_cache(run, tmp_path, monkeypatch, fake_api):
    from huggingface_hub import constants

    from cadel_modeling.modeling.factory import load_model
    repo = tmp_path / "hub" / "models--someone--tiny_lt"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(run.model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    model_dir = find_model_dir("someone/tiny_lt")
    assert model_dir.resolve() == (repo / "snapshots" / commit).resolve()
    assert run_config_path(model_dir).is_file()  # evaluation takes its defaults from it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(model_dir)(x).logits, run.model(x).logits)
    with pytest.raises(FileNotFoundError, match="local cache"):
        find_model_dir("someone/never-downloaded")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        find_model_dir("no/such/folder")

    # evaluation of a Hub id: new results live outside the cache, and so must the card
    with pytest.raises(ValueError, match="card_path"):
        push_to_hub(model_dir, "someone/tiny_lt")
    write_results(tmp_path / "out" / "eval_test", "test", {**TEST_MAIN, "accuracy": 0.7})
    assert push_to_hub(model_dir, "someone/tiny_lt", eval_dirs=[tmp_path / "out" / "eval_test"],
                       card_path=tmp_path / "out" / "README.md")
    uploaded = fake_api.calls[-1][2]
    assert json.loads(uploaded["eval_test/results.json"]) == json.loads(
        (tmp_path / "out" / "eval_test" / "results.json").read_text())
    assert "| test | last rule, tau=1 (main) | 70.0 |" in (tmp_path / "out" / "README.md").read_text()


def test_a_stage_uploads_with_the_runs_hub_settings_only_when_asked(tmp_path, monkeypatch):
    """``StageFrame.finish``: the one place a stage's upload meets the run's Hub settings; ``--hub_model_id`` before
    the stage's default (a Hub model's own id, for its evaluation)."""
    from cadel_modeling.hub import publish
    from cadel_modeling.stages.frame import StageFrame
    calls = []
    monkeypatch.setattr(publish, "push_to_hub", lambda *args, **kwargs: calls.append((args, kwargs)))
    hub = dict(hub_private=True, hub_token="hf_x", hub_revision="v1", hub_commit_message="m", hub_license="mit")
    StageFrame(RunConfig(push_to_hub=False, **hub), tmp_path / "tracking").finish(upload=tmp_path / "model")
    assert calls == []
    out = tmp_path / "out"
    StageFrame(RunConfig(push_to_hub=True, **hub), tmp_path / "tracking").finish(
        upload=tmp_path / "model", default_repo_id="someone/model", eval_dirs=[out / "eval_test"],
        card_path=out / "README.md")
    StageFrame(RunConfig(push_to_hub=True, hub_model_id="me/mine", **hub), tmp_path / "tracking").finish(
        upload=tmp_path / "model", default_repo_id="someone/model")
    StageFrame(RunConfig(push_to_hub=True, **hub), tmp_path / "tracking").finish(upload=tmp_path / "model")
    settings = {"private": True, "token": "hf_x", "revision": "v1", "commit_message": "m", "license": "mit"}
    assert calls == [
        ((tmp_path / "model", "someone/model"), {**settings, "eval_dirs": [out / "eval_test"],
                                                 "card_path": out / "README.md"}),
        ((tmp_path / "model", "me/mine"), {**settings, "eval_dirs": (), "card_path": None}),
        ((tmp_path / "model", None), {**settings, "eval_dirs": (), "card_path": None})]  # push_to_hub: the run's name
    assert not (tmp_path / "tracking").exists()  # no tracker asked for
