"""Models that load anywhere: the remote code saved with every model folder (transformers alone, no cadel),
fresh and finite heads when a model is re-headed for new classes, starting a run from a cadel model, and the
backbone exported as a timm model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cadel_modeling.modeling import CadelConfig, CadelForImageClassification
from cadel_modeling.modeling.processing import save_image_processor

from conftest import requires_fashion_mnist

REMOTE_CHECK = r"""
import sys, json
sys.modules["cadel_modeling"] = None  # cadel is not importable here
try:
    import cadel_modeling  # noqa
    raise SystemExit("cadel_modeling imported")
except ImportError:
    pass
import numpy as np, torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline
folder, out = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder)
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
pixels = processor(images=image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values=pixels).logits[0]
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
top = classifier(image, top_k=3)
np.save(out, logits.numpy())
print(json.dumps({"module": type(model).__module__, "tau": config.tau, "labels": [p["label"] for p in top],
                  "scores": [p["score"] for p in top]}))
"""


def check_without_cadel(folder: Path, tmp_path: Path) -> dict:
    script = tmp_path / "check.py"
    script.write_text(REMOTE_CHECK)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "logits.npy")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@requires_fashion_mnist
def test_a_trained_model_loads_with_transformers_alone_and_gives_cadels_logits(trained_run, tmp_path):
    """The folder stage 1 writes (the demo's recipe, 3 epochs): remote code, image processor, labels, tau."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from cadel_modeling.modeling.factory import load_model
    out, _ = trained_run
    folder = out / "best_model"
    assert {"modeling_cadel.py", "heads.py", "backbones.py"} <= {p.name for p in folder.iterdir()}
    got = check_without_cadel(folder, tmp_path)
    assert got["module"].startswith("transformers_modules.")  # the copy saved with the model, not the package
    model = load_model(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    pixels = AutoImageProcessor.from_pretrained(str(folder))(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)
    names = [model.config.id2label[i] for i in np.argsort(-expected)[:3]]
    assert got["labels"] == names and got["labels"][0] in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_the_remote_code_is_the_package_source():
    """One source: the files saved with a model are the package's own modules, byte for byte."""
    from tempfile import TemporaryDirectory

    import cadel_modeling.modeling as modeling
    package = Path(modeling.__file__).parent
    with TemporaryDirectory() as folder:
        model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=32,
                                                        aux_head="light"))
        model.save_pretrained(folder)
        for name in ("modeling_cadel.py", "heads.py", "backbones.py"):
            assert (Path(folder) / name).read_bytes() == (package / name).read_bytes(), name
        auto_map = json.loads((Path(folder) / "config.json").read_text())["auto_map"]
        assert auto_map == {"AutoConfig": "modeling_cadel.CadelConfig",
                            "AutoModelForImageClassification": "modeling_cadel.CadelForImageClassification"}
    for name in ("modeling_cadel.py", "heads.py", "backbones.py"):  # nothing but torch, timm, transformers
        imports = [line for line in (package / name).read_text().splitlines() if line.startswith(("import ", "from "))]
        assert all(line.split()[1].split(".")[0] in ("__future__", "typing", "math", "itertools", "dataclasses",
                                                    "functools", "torch", "timm", "transformers", "")
                   for line in imports), imports


def test_reheaded_from_pretrained_gets_fresh_finite_heads_and_learns(tmp_path):
    torch.manual_seed(0)
    source = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=10, image_size=32,
                                                     aux_head="light", class_counts=list(range(10, 0, -1))))
    source.save_pretrained(str(tmp_path / "ten"))
    with pytest.raises(ValueError, match="pass class_counts"):
        CadelForImageClassification.from_pretrained(str(tmp_path / "ten"), num_labels=5, ignore_mismatched_sizes=True)
    names = {i: f"new{i}" for i in range(5)}
    model = CadelForImageClassification.from_pretrained(str(tmp_path / "ten"), num_labels=5, id2label=names,
                                                        class_counts=[9, 7, 5, 3, 1], ignore_mismatched_sizes=True)
    assert model.config.class_counts == [9, 7, 5, 3, 1] and model.config.id2label == names
    for k in (1, 2, 3):
        w = model.exit_classifier(k).weight
        bound = 1 / w.shape[1] ** 0.5
        assert w.shape[0] == 5 and torch.isfinite(w).all() and w.abs().max() <= bound and w.std() > bound / 4
    kept = model.backbone.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in source.backbone.state_dict().items())  # the backbone is kept
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 5
    model.config.tau = 1.0
    out = model(pixel_values=x, labels=y)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    model.config.tau = 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = model(pixel_values=x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # it learns


def test_init_weights_recreates_the_published_heads_init():
    """A faithful head re-created by from_pretrained: He-normal convs, BatchNorm 1/0, cosine head in its bound."""
    from cadel_modeling.modeling.heads import ConvAuxHead
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=4, image_size=64,
                                                    aux_width=64, aux_groups=4, aux_padding="same"))
    head = model.aux_exits[0]
    assert isinstance(head, ConvAuxHead)
    for module in head.modules():  # as from_pretrained leaves a head it could not load: garbage, not flagged
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            t.data.fill_(float("nan") if t.is_floating_point() else 7)
            t._is_hf_initialized = False
        model._init_weights(module)
    conv = head.body[2][0]
    assert abs(conv.weight.std().item() - (2 / (9 * 64)) ** 0.5) < 0.1 * (2 / (9 * 64)) ** 0.5
    bn = head.body[0][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_var, torch.ones(64))
    assert bn.num_batches_tracked.item() == 0
    assert all(torch.isfinite(t).all() for t in head.state_dict().values())


@pytest.mark.slow
@requires_fashion_mnist
def test_init_from_a_cadel_model_starts_a_new_run_from_its_weights(trained_run, tmp_path):
    from cadel_modeling.config import parse_config
    from cadel_modeling.stages import stage1
    out, _ = trained_run
    args = ["--config", "fashion_mnist_lt", "--epochs", "2", "--n_max", "60", "--imb_factor", "10",
            "--val_per_class", "10", "--batch_size", "16", "--seed", "1"]
    summary = stage1.run(parse_config(args + ["--init_from", str(out / "best_model"),
                                              "--output_dir", str(tmp_path / "finetune")]))
    fresh = stage1.run(parse_config(args + ["--output_dir", str(tmp_path / "fresh")]))
    # The same 2 epochs on ~200 images from a random init stay near chance (measured 0.10); from the trained
    # model, far above it (measured 0.34): the weights really came over.
    assert summary["best_val_top1"] >= fresh["best_val_top1"] + 0.15, (summary, fresh)
    run_config = (tmp_path / "finetune" / "best_model" / "run_config.yaml").read_text()
    assert f"init_from: {out / 'best_model'}" in run_config
    init = json.loads((tmp_path / "finetune" / "run_info.json").read_text())["init_from"]
    total = len(CadelForImageClassification.from_pretrained(str(out / "best_model")).state_dict())
    assert (init["tensors_loaded"], init["tensors_fresh"]) == (total, 0)  # the same 10 classes: everything came over
    assert f"initialised from {out / 'best_model'}: {total} tensors loaded, 0 kept fresh" in \
        (tmp_path / "finetune" / "train.log").read_text()


@pytest.mark.parametrize("augmentation, image_size", [("small", 32), ("imagenet", 32), ("imagenet", 224),
                                                     ("imagenet", 443)])  # 443 / (443 / 506) rounds down to 505
def test_timm_export_rebuilds_the_models_own_eval_transform(tmp_path, augmentation, image_size):
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import create_transform, resolve_data_config

    from cadel_modeling.data.transforms import build_transform
    from cadel_modeling.hub.timm_export import export_timm_backbone
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    model = CadelForImageClassification(CadelConfig(backbone="test_resnet", num_labels=3, image_size=image_size,
                                                    aux_head="light", image_mean=mean, image_std=std)).eval()
    model.save_pretrained(str(tmp_path / "model"))
    save_image_processor(tmp_path / "model", model.config, augmentation)
    out = export_timm_backbone(str(tmp_path / "model"), tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert "tag" not in config and "license" not in config  # timm's test_resnet.r160_in1k weights are not these
    plain = timm.create_model(f"local-dir:{out}", pretrained=True)
    timm_eval = create_transform(**resolve_data_config(model=plain))  # what a timm user runs
    cadel_eval = build_transform(False, image_size, mean, std, augmentation)
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]  # 640x427 photos
    photos += [photos[0].resize((45, 61)), photos[1].crop((100, 50, 400, 130))]  # small, and very wide
    for photo in photos:
        torch.testing.assert_close(timm_eval(photo), cadel_eval(photo), atol=1e-6, rtol=0)


def test_the_backbone_exports_as_a_timm_model(tmp_path):
    import timm

    from cadel_modeling.hub.timm_export import export_timm_backbone
    torch.manual_seed(0)
    for backbone, kwargs in (("test_resnet", {"aux_head": "light"}), ("test_vit", {})):
        model = CadelForImageClassification(CadelConfig(backbone=backbone, num_labels=4, image_size=32,
                                                        image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.2, 0.2],
                                                        **kwargs)).eval()
        model.save_pretrained(str(tmp_path / backbone))
        save_image_processor(tmp_path / backbone, model.config, "imagenet")
        out = export_timm_backbone(str(tmp_path / backbone), tmp_path / f"timm_{backbone}")
        config = json.loads((out / "config.json").read_text())
        assert config["architecture"] == backbone
        assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["mean"] == [0.3, 0.4,
                                                                                                             0.5]
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            if backbone == "test_resnet":
                expected = model.backbone(x)[-1].mean((2, 3))
            else:
                expected = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
            torch.testing.assert_close(plain(x), expected)
