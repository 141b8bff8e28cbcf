"""Stage 1's decisions through its real entry point, in seconds: a test_resnet cascade on a 14-image
ImageNet-LT-shaped folder (3 steps per epoch), with the validation logits scripted per epoch so that the choices are
known in advance (validation top-1 that goes up and down, exits that disagree). Guards what the real-training tests
guard only slowly: the best epoch on validation (not the last), the exit(s) validated, the T the loss receives each
epoch, and a stop signal (the checkpoint at the interrupted step, and a resume that repeats the uninterrupted run).
Then stage 2's choices on scripted logits, and what the commands read before their stage works, each read once and
passed down: the model folder stage 2 and evaluation read (located and checked once, by ``cli.resolve_config``) and,
at a resume, the checkpoint's metadata and the run's ``run_info.json`` (``run_folder.resume_target``), from which
whether the checkpoint belongs to another run follows."""
import json
import math
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file
from test_data_builders import COUNTS, write_split_lists

from cadel_modeling import evaluate, train_stage2
from cadel_modeling.config import RunConfig, parse_config
from cadel_modeling.modeling import locate
from cadel_modeling.modeling.factory import load_model
from cadel_modeling.stages import evaluation, stage1
from cadel_modeling.stages.run_folder import check_output_dir, resume_target
from cadel_modeling.training.checkpointing import list_checkpoints
from cadel_modeling.training.preemption import Preempted
from cadel_modeling.utils import io
from cadel_modeling.utils.errors import OutputDirError

EPOCHS = 4
STEPS_PER_EPOCH = sum(COUNTS) // 4  # 3: the last, partial batch is dropped
NUM_EXITS = 3  # test_resnet's cascade: two auxiliary exits and the backbone's own


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lists")
    write_split_lists(root)
    return root


def config(root, out, *extra):
    return parse_config(["--dataset", "imagenet_lt", "--data_dir", str(root / "ImageNet_LT"), "--image_root",
                         str(root), "--backbone", "test_resnet", "--image_size", "32", "--aux_head", "light",
                         "--epochs", str(EPOCHS), "--batch_size", "4", "--eval_batch_size", "8", "--num_workers",
                         "0", "--augmentation", "none", "--keep_last_checkpoints", "10", "--output_dir", str(out),
                         *extra])


def scripted_logits(correct_rows: int, labels: torch.Tensor, num_classes: int = len(COUNTS)) -> torch.Tensor:
    """[N, C] logits whose argmax is the label on the first ``correct_rows`` rows and the next class elsewhere."""
    predicted = torch.where(torch.arange(len(labels)) < correct_rows, labels, (labels + 1) % num_classes)
    return 5.0 * torch.nn.functional.one_hot(predicted, num_classes).float()


class ScriptedValidation:
    """Stands in for ``stage1.predict``: per epoch, the last exit gets ``last[e]`` correct rows of 8 and the other
    exits ``others[e]``; records which exits each call asked for."""

    def __init__(self, last, others):
        self.last, self.others, self.asked = last, others, []

    def __call__(self, model, loader, accelerator, exits=None, desc=""):
        epoch = len(self.asked)
        self.asked.append(exits)
        labels = torch.cat([b["labels"] for b in loader]).cpu()
        every = [scripted_logits(self.others[epoch], labels)] * (NUM_EXITS - 1) + \
            [scripted_logits(self.last[epoch], labels)]
        chosen = every if exits is None else [every[k - 1] for k in exits]
        return torch.stack(chosen), labels


def train_log(run):
    """The run's train_log.jsonl records (every line must parse)."""
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_the_best_validation_epoch_is_kept_not_the_last(data_root, tmp_path, monkeypatch):
    # last exit (the CNN rule's score): 2, 6, 4, 6 of 8 right -> best epoch 2 (a later tie does not replace it);
    # the auxiliary exits peak at epoch 1 and would choose it
    validation = ScriptedValidation(last=[2, 6, 4, 6], others=[8, 0, 0, 0])
    monkeypatch.setattr(stage1, "predict", validation)
    out = tmp_path / "run"
    summary = stage1.run(config(data_root, out))
    assert validation.asked == [[NUM_EXITS]] * EPOCHS  # a CNN validates on its last exit only, raw
    assert (summary["best_epoch"], summary["best_val_top1"]) == (2, 0.75)
    log = train_log(out)
    assert [r["val_top1"] for r in log] == [0.25, 0.75, 0.5, 0.75]
    assert [(r["best_epoch"], r["best_val_top1"]) for r in log] == [(1, 0.25), (2, 0.75), (2, 0.75), (2, 0.75)]
    # best_model holds the weights of the end of epoch 2 (its end-of-epoch checkpoint), not those of the last epoch
    end_of_epoch = {int(p.name.split("_")[1]): p for p in list_checkpoints(out)}
    best, epoch2 = weights(out / "best_model"), weights(end_of_epoch[2 * STEPS_PER_EPOCH])
    assert best.keys() and all(torch.equal(best[k], epoch2[k]) for k in best)
    last = weights(out / "last_model")
    assert any(not torch.equal(best[k], last[k]) for k in best)


def test_the_loss_receives_each_epochs_T_and_the_log_records_it(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[1] * EPOCHS, others=[1] * EPOCHS))
    seen = []

    class RecordingLoss(stage1.CascadeLoss):
        def forward(self, exit_logits, y_a, y_b, lam, T):
            seen.append(T)
            return super().forward(exit_logits, y_a, y_b, lam, T)

    monkeypatch.setattr(stage1, "CascadeLoss", RecordingLoss)
    out = tmp_path / "run"
    stage1.run(config(data_root, out))
    expected = [1 - e / EPOCHS for e in range(1, EPOCHS + 1)]  # 0.75, 0.5, 0.25, 0: T = 1 - epoch / E, 1-indexed
    assert seen == [t for t in expected for _ in range(STEPS_PER_EPOCH)]
    log = train_log(out)
    assert [r["T"] for r in log] == expected


def interrupt_at(monkeypatch, global_step: int) -> None:
    """A stop signal arriving while step ``global_step`` runs (the loop sees it once that step's flags are read)."""
    real = stage1.train_one_epoch

    def train_one_epoch(*args, preemption=None, on_step=None, **kwargs):
        def step(record):
            if record.global_step == global_step - 1:
                preemption.requested = True
            if on_step is not None:
                on_step(record)
        return real(*args, preemption=preemption, on_step=step, **kwargs)

    monkeypatch.setattr(stage1, "train_one_epoch", train_one_epoch)


def test_a_stop_signal_checkpoints_the_interrupted_step_and_resuming_repeats_the_run(data_root, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[2, 6, 4, 6] * 2, others=[0] * 8))
    stage1.run(config(data_root, tmp_path / "whole"))

    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[2, 6, 4, 6], others=[0] * 4))
    with monkeypatch.context() as m:
        interrupt_at(m, global_step=5)  # epoch 2, its second step of three
        with pytest.raises(Preempted, match="at epoch 2 step 2;"):
            stage1.run(config(data_root, tmp_path / "cut"))
    meta = json.loads((list_checkpoints(tmp_path / "cut")[-1] / "cadel_checkpoint.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"]) == (2, 2)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_00000003", "step_00000005"]
    # epoch 2 had not been validated: the resumed run validates epochs 2-4 and takes the same decisions
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[6, 4, 6], others=[0] * 3))
    summary = stage1.run(config(data_root, tmp_path / "cut", "--resume_from_checkpoint", "latest"))
    assert (summary["best_epoch"], summary["best_val_top1"]) == (2, 0.75)
    for folder in ("best_model", "last_model"):
        a, b = weights(tmp_path / "whole" / folder), weights(tmp_path / "cut" / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ stage 2
@pytest.fixture(scope="module")
def stage1_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(stage1, "predict", ScriptedValidation(last=[1, 2], others=[0, 0]))
        stage1.run(config(data_root, out, "--epochs", "2"))
    return out


def tail_or_head(label: int, rows: int = 8) -> tuple:
    """[K, rows, C] logits preferring the head class 0 over the tail class 3 by 0.75 x log(n_0 / n_3): logit
    adjustment turns the prediction to class 3 from tau = 1 on (tau 0 and 0.5 keep class 0); labels all ``label``."""
    z = torch.full((rows, len(COUNTS)), -20.0)
    z[:, 0] = 0.75 * math.log(COUNTS[0] / COUNTS[3])
    z[:, 3] = 0.0
    return z.expand(NUM_EXITS, -1, -1).clone(), torch.full((rows,), label)


def test_stage2_chooses_tau_on_validation_not_on_test(stage1_run, monkeypatch, capsys):
    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import STAGE2
    from cadel_modeling.stages import frame, stage2

    # validation rows are of the tail class (best tau: 1.0, the first of 1.0 and 1.5); test rows of the head class
    # (best tau: 0)
    splits = {"val": tail_or_head(3), "test": tail_or_head(0)}
    from cadel_modeling.stages import logit_adjustment
    monkeypatch.setattr(logit_adjustment, "predict_split", lambda model, loader, accelerator, size, split:
                        splits[split])
    logged = []
    make_accelerator = frame.make_accelerator

    def recording_accelerator(**kwargs):  # what trackers would receive
        accelerator = make_accelerator(**kwargs)
        accelerator.log = lambda values, step=None, **kw: logged.append((step, values))
        return accelerator

    monkeypatch.setattr(frame, "make_accelerator", recording_accelerator)
    cfg, model_dir = resolve_config(STAGE2, ["--stage1_dir", str(stage1_run), "--tau_grid", "[0.0, 0.5, 1.0, 1.5]",
                                             "--exit_weight_step", "0.5", "--select_inference_rule",
                                             "--overwrite_output_dir"], "")
    summary = stage2.run(cfg, model_dir)
    out = stage1_run / "stage2_logit_adjustment"
    assert json.loads((out / "stage2_results.json").read_text()) == json.loads(json.dumps(summary))
    assert (summary["method"], summary["inference_rule"], summary["exits"], summary["tau_grid"], summary["crt"]) == \
        ("logit_adjustment", "last", [NUM_EXITS], [0.0, 0.5, 1.0, 1.5], None)
    assert [(step, values) for step, values in logged] == [
        (i, {"stage2/tau": t, "stage2/val_top1_at_tau": v}) for i, (t, v) in
        enumerate(zip([0.0, 0.5, 1.0, 1.5], [0.0, 0.0, 1.0, 1.0]))] + \
        [(4, {"stage2/chosen_tau": 1.0, "stage2/val_top1": 1.0})]
    ensemble = json.loads((out / "model" / "ensemble.json").read_text())
    assert ensemble["selected_on"] == "val" and ensemble["tau"] == 1.0
    report = json.loads((out / "eval_test" / "results.json").read_text())
    assert report["split"] == "test" and report["ensemble"] == {k: v for k, v in ensemble.items() if k != "selected_on"}
    assert [r["top1"] for r in summary["val_sweep"]] == [0.0, 0.0, 1.0, 1.0]
    assert [r["top1"] for r in summary["test_sweep"]] == [1.0, 1.0, 0.0, 0.0]
    assert summary["tau"] == 1.0 and summary["val_top1"] == 1.0 and summary["tau_selected_on"] == "val"
    assert summary["ensemble"]["tau"] == 1.0 and summary["selected_rule"]["tau"] == 1.0
    assert summary["test"][next(iter(summary["test"]))]["accuracy"] == 0.0  # the val choice, honestly reported
    saved = json.loads((stage1_run / "stage2_logit_adjustment" / "model" / "config.json").read_text())
    assert saved["tau"] == 1.0
    printed = capsys.readouterr().out
    assert "\n" + stage2.choices_text(summary, NUM_EXITS) + "\n" in printed and "\ntest split:\n" in printed
    # without the exit-weight search: tau from the sweep alone, and the previous run's weights do not outlive it
    summary = stage2.run(*resolve_config(STAGE2, ["--stage1_dir", str(stage1_run), "--tau_grid",
                                                  "[0.0, 0.5, 1.0, 1.5]", "--exit_weight_step", "0",
                                                  "--overwrite_output_dir"], ""))
    assert summary["ensemble"] is None and "selected_rule" not in summary
    assert not (out / "model" / "ensemble.json").exists()
    saved = json.loads((out / "model" / "config.json").read_text())
    assert (saved["tau"], saved["inference_rule"], saved["exit_weights"]) == (1.0, "auto", None)


# -- what a command reads, read once ------------------------------------------------------------------------------

def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_local_evaluation_locates_its_model_once(stage1_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    calls = []
    real = locate.find_model_dir
    model_dir = real(str(run))  # the newest model of the run (stage 2's when the stage-2 tests above ran)

    def counting(ref):
        calls.append(ref)
        return real(ref)

    monkeypatch.setattr(locate, "find_model_dir", counting)
    monkeypatch.setattr(evaluation, "find_model_dir", counting, raising=False)  # where the stage looked it up again
    assert evaluate.main(["--eval_model", str(run), "--eval_split", "val"]) == 0
    assert calls == [str(run)]  # the config, the lock's run folder and the stage all use that one answer
    assert json.loads((model_dir / "eval_val" / "results.json").read_text())["split"] == "val"


def test_stage2_without_a_stage1_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")
    before = tree(tmp_path)
    assert train_stage2.main(["--stage1_dir", str(run)]) == 2
    assert f"error: {run / 'best_model'} holds no model: run stage 1 with --output_dir {run} first" in \
        capsys.readouterr().err
    assert tree(tmp_path) == before


def test_a_resume_reads_the_checkpoint_metadata_and_run_info_once(data_root, stage1_run, tmp_path,
                                                                   monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):  # every read_json of cadel's goes through utils/io.py's open
        if not args and "mode" not in kwargs:
            reads.append(str(path).rsplit("/", 1)[-1])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open, raising=False)
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[3], others=[0]))
    summary = stage1.run(config(data_root, run, "--epochs", "3", "--resume_from_checkpoint", "latest"))
    # once by the checks (resume_target), once by load_checkpoint, which verifies what it loads
    assert reads.count("cadel_checkpoint.json") == 2
    assert reads.count("run_info.json") == 1
    info = json.loads((run / "run_info.json").read_text())
    assert summary["run_id"] == info["run_id"] == json.loads((stage1_run / "run_info.json").read_text())["run_id"]
    assert [(c["key"], c["old"], c["new"]) for c in info["config_changes"]] == [("epochs", 2, 3)]


def test_whether_a_checkpoint_belongs_to_another_run_follows_from_the_files_read_once(stage1_run, tmp_path):
    mine = tmp_path / "mine"
    shutil.copytree(stage1_run, mine)
    checkpoint = list_checkpoints(stage1_run)[-1]
    own = resume_target(RunConfig(output_dir=str(mine), resume_from_checkpoint=str(checkpoint)))
    assert own.path == checkpoint and not own.foreign and own.meta["run_id"] == own.run_info["run_id"]
    check_output_dir(RunConfig(output_dir=str(mine)), own)  # its own run's checkpoint: resumed there
    info = json.loads((mine / "run_info.json").read_text())
    (mine / "run_info.json").write_text(json.dumps({**info, "run_id": "another"}))
    other = resume_target(RunConfig(output_dir=str(mine), resume_from_checkpoint=str(checkpoint)))
    assert other.foreign and other.run_info["run_id"] == "another"
    with pytest.raises(OutputDirError, match=f"{checkpoint} is a checkpoint of another run than the one in {mine}"):
        check_output_dir(RunConfig(output_dir=str(mine)), other)
    empty = resume_target(RunConfig(output_dir=str(tmp_path / "new"), resume_from_checkpoint=str(checkpoint)))
    assert not empty.foreign and empty.run_info == {}  # an empty folder holds no run to replace
    assert resume_target(RunConfig(output_dir=str(mine))) is None


# ---------------------------------------------------------------------- what stage 1 and evaluation write and say
@pytest.fixture
def tracker_calls(monkeypatch):
    """Every ``Accelerator.log`` call as (accelerator, values, step): what a tracker would receive."""
    import accelerate

    from cadel_modeling.training import tracking
    calls = []
    monkeypatch.setattr(accelerate.Accelerator, "log", lambda self, values, step=None, **kw: calls.append(
        (self, values, step)))
    monkeypatch.setattr(tracking, "start", lambda accelerator, name, config: calls.append(("start", name, config)))
    return calls


def log_lines(run):
    """The messages of the run's train.log, without the time and level prefix."""
    return [line.split(" cadel: ", 1)[-1] for line in (run / "train.log").read_text().splitlines()]


def test_stage1_records_its_settings_results_and_progress_exactly(data_root, stage1_run, tmp_path, monkeypatch,
                                                                 tracker_calls):
    import platform

    import accelerate
    import timm
    import transformers
    from accelerate.utils import DynamoBackend

    from cadel_modeling.modeling.costs import model_summary
    from cadel_modeling.training.accelerator import replica_digests
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[2, 6, 4, 6], others=[0] * EPOCHS))
    out = tmp_path / "run"
    parent = stage1_run / "best_model"
    started = time.time()
    summary = stage1.run(config(data_root, out, "--grad_accum_steps", "2", "--init_from", str(parent),
                                "--report_to", "tensorboard"))
    wall = time.time() - started
    # run_info.json: everything needed to know how the run was made
    info = json.loads((out / "run_info.json").read_text())
    assert len(info["run_id"]) == 12 and int(info["run_id"], 16) >= 0
    init = info.pop("init_from")
    assert init["source"] == str(parent) and init["tensors_fresh"] == 0  # same classes: every tensor carried over
    assert info == {
        "run_id": summary["run_id"], "command": io.command_line(), "num_processes": 1, "global_batch_size": 4,
        "batch_size_per_process": 2, "mixed_precision": "no", "device": "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                     "accelerate": accelerate.__version__, "transformers": transformers.__version__},
        "class_names": ["n00000000", "n00000001", "n00000002", "n00000003"], "class_counts": COUNTS,
        "data_notes": [f"ImageNet-LT: standard split lists from {data_root / 'ImageNet_LT'}, images under {data_root}; "
                       f"14 train / 8 val / 8 test images; the checkpoint and tau are chosen on val, results reported "
                       f"on test"], "config_changes": []}
    # the accelerator the stage asked for: accumulation, seedable sampler, trackers under the run; and no compilation
    # (accelerate keeps the dynamo backend of the process's first Accelerator, so this holds for the process)
    _, name, settings = tracker_calls.pop(0)  # the tracker run starts first, named after the run folder
    assert (name, settings["run_id"], settings["grad_accum_steps"], settings["output_dir"]) == \
        ("run", summary["run_id"], 2, str(out))
    accelerator = tracker_calls[0][0]
    assert accelerator.gradient_accumulation_steps == 2
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    assert accelerator.dataloader_config.use_seedable_sampler is True
    assert accelerator.project_configuration.project_dir == str(out / "tracking")
    # one train_log record per epoch, with its wall time
    log = train_log(out)
    assert [r["skipped_images"] for r in log] == [0] * EPOCHS
    assert all(0 < r["epoch_time_s"] <= wall and r["epoch_time_s"] == round(r["epoch_time_s"], 2) for r in log)
    # the trackers get each epoch's validation and loss at its last global step
    epochs = [(values, step) for _, values, step in tracker_calls if "val/top1" in values]
    assert [step for _, step in epochs] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    for (values, _), r in zip(epochs, log):
        groups = {f"val/{g}": r[f"val_{g}"] for g in ("many", "medium", "few") if r[f"val_{g}"] is not None}
        assert values == {"val/top1": r["val_top1"], **groups, "train/epoch_loss": r["train_loss"]}
    # the summary, written last
    assert json.loads((out / "stage1_summary.json").read_text()) == {
        "run_id": info["run_id"], "best_val_top1": 0.75, "best_epoch": 2, "epochs": EPOCHS, "skipped_steps": 0,
        "selection": "val top-1 of the raw last exit (CNN rule)",
        "replica_weight_digests": replica_digests(None, load_model(out / "last_model"))}
    # the log a person reads
    lines = log_lines(out)
    net = load_model(out / "best_model")
    summary_at = lines.index("test_resnet cascade, parameters and MACs per image:")
    assert "\n".join(lines[summary_at + 1:]).startswith(model_summary(net, 32))
    assert init["summary"] in lines
    assert [line for line in lines if line.startswith("epoch ") and " val top-1 " in line] == [
        f"epoch {r['epoch']}/{EPOCHS} loss {r['train_loss']:.4f} lr {r['lr']:.5f} val top-1 "
        f"{100 * r['val_top1']:.2f}%" + (" (best)" if best else "") for r, best in zip(log, [1, 1, 0, 0])]
    assert lines[-1] == f"stage 1 done: best val top-1 75.00% at epoch 2; model in {out / 'best_model'}"


def test_a_vit_cascade_validates_on_the_logit_adjusted_sum_of_its_exits(data_root, tmp_path, monkeypatch):
    validation = ScriptedValidation(last=[0, 8], others=[8, 0])
    monkeypatch.setattr(stage1, "predict", validation)
    out = tmp_path / "vit"
    summary = stage1.run(config(data_root, out, "--backbone", "test_vit", "--epochs", "2"))
    assert validation.asked == [None, None]  # every exit, not the last alone
    assert summary["selection"] == "val top-1 of the tau=1 logit-adjusted sum of exits (ViT rule)"
    # by hand: a row's label y gets 5 per exit that is right, the next class w per exit that is wrong, then 3 x log
    # prior is subtracted (tau 1 per exit). Epoch 1 (two exits right): y wins unless 3 log(n_y / n_w) > 5, never with
    # counts 6, 4, 3, 1. Epoch 2 (one exit right): y wins only if 3 log(n_w / n_y) > 5, i.e. n_w / n_y > 5.3: class 3
    # (1 image) against class 0 (6): its 2 of the 8 validation rows. The raw last exit would give 0.0 and 1.0.
    log = train_log(out)
    assert [r["val_top1"] for r in log] == [1.0, 0.25]


def test_resuming_from_an_earlier_checkpoint_drops_the_records_of_the_epochs_it_redoes(stage1_run, data_root,
                                                                                       tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    end_of_epoch_1 = [p for p in list_checkpoints(run) if int(p.name.split("_")[1]) == STEPS_PER_EPOCH][0]
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[3], others=[0]))
    stage1.run(config(data_root, run, "--epochs", "2", "--resume_from_checkpoint", str(end_of_epoch_1)))
    log = train_log(run)
    assert [r["epoch"] for r in log] == [1, 2]  # epoch 2's earlier record replaced, not kept beside the new one
    assert log[1]["val_top1"] == 3 / 8
    assert f"resumed from {end_of_epoch_1} at epoch 2, step 0" in log_lines(run)
    # a second resume keeps the changes recorded at the first
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[3], others=[0]))
    stage1.run(config(data_root, run, "--epochs", "3", "--resume_from_checkpoint", "latest"))
    monkeypatch.setattr(stage1, "predict", ScriptedValidation(last=[3], others=[0]))
    stage1.run(config(data_root, run, "--epochs", "4", "--resume_from_checkpoint", "latest"))
    changes = json.loads((run / "run_info.json").read_text())["config_changes"]
    assert [(c["key"], c["old"], c["new"]) for c in changes] == [("epochs", 2, 3), ("epochs", 3, 4)]


def test_an_evaluation_reports_to_its_trackers_and_says_where_its_results_are(stage1_run, tmp_path, monkeypatch,
                                                                            tracker_calls, capsys):
    from cadel_modeling.metrics import format_table
    from cadel_modeling.run_layout import PER_CLASS_CSV, PER_CLASS_PLOT, RESULTS_FILE
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    model_dir = locate.find_model_dir(str(run))
    capsys.readouterr()
    assert evaluate.main(["--eval_model", str(run), "--eval_split", "val", "--report_to", "tensorboard",
                          "--tracking_dir", str(tmp_path / "tb")]) == 0
    out = model_dir / "eval_val"
    saved = json.loads((out / "results.json").read_text())
    assert (saved["command"], saved["num_processes"]) == (io.command_line(), 1)
    _, name, settings = tracker_calls.pop(0)
    assert (name, settings["eval_model"]) == ("eval_val", str(run))
    results = saved["results"]
    main = results[saved["main"]]
    assert any(not isinstance(v, (int, float)) for v in main.values())  # lists and texts stay out of the trackers
    assert tracker_calls == [(tracker_calls[0][0], {f"eval/val/{k}": v for k, v in main.items()
                                                    if isinstance(v, (int, float))}, 0)]
    assert tracker_calls[0][0].project_configuration.project_dir == str(tmp_path / "tb")  # --tracking_dir wins
    printed = capsys.readouterr().out
    assert printed.endswith(f"\n{model_dir} on imagenet_lt val (8 images)\n{format_table(results)}\n\nresults: "
                            f"{out / RESULTS_FILE}, per-class: {out / PER_CLASS_CSV}, plot: {out / PER_CLASS_PLOT}\n")


def test_eval_exits_are_checked_against_the_model_before_the_network_runs(stage1_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    model_dir = locate.find_model_dir(str(run))
    before = tree(run)
    for bad in ("[4]", "[0]", "[2, 2]"):  # the model has exits 1..3
        assert evaluate.main(["--eval_model", str(run), "--eval_split", "val", "--eval_exits", bad]) == 2
        assert "must be distinct exit numbers in 1..3" in capsys.readouterr().err
        assert tree(run) == before
    assert evaluate.main(["--eval_model", str(run), "--eval_split", "val", "--eval_exits", "[1, 3]"]) == 0
    results = json.loads((model_dir / "eval_val" / "results.json").read_text())
    assert results["exits"] == [1, 3]


def test_a_hub_models_evaluation_writes_into_the_output_dir_and_publishes_from_there(data_root, stage1_run, tmp_path,
                                                                                    monkeypatch):
    from cadel_modeling.hub import publish
    uploads = []
    monkeypatch.setattr(publish, "push_to_hub", lambda folder, repo_id, **kw: uploads.append((folder, repo_id, kw)))
    cache = tmp_path / "cache"  # stands in for the downloaded Hub snapshot (read-only for the evaluation)
    shutil.copytree(stage1_run / "best_model", cache)
    before = tree(cache)
    out = tmp_path / "out"
    cfg = config(data_root, out, "--push_to_hub", "true")
    cfg.eval_model, cfg.eval_split = "someone/cadel-model", "val"  # as evaluate.py sets them for a Hub id
    results = evaluation.run(cfg, cache)
    assert tree(cache) == before
    assert json.loads((out / "eval_val" / "results.json").read_text())["results"] == results
    # the model goes back to its own repo with the results and the card written outside the cache
    [(folder, repo_id, kw)] = uploads
    assert (folder, repo_id, kw["eval_dirs"], kw["card_path"]) == (cache, "someone/cadel-model", [out / "eval_val"],
                                                                   out / "README.md")
    # a local model is uploaded from its folder, with its results inside it, to --hub_model_id or the folder's name
    local = tmp_path / "local"
    shutil.copytree(stage1_run / "best_model", local)
    cfg = config(data_root, tmp_path / "out2", "--push_to_hub", "true")
    cfg.eval_model, cfg.eval_split = str(local), "val"
    evaluation.run(cfg, local)
    assert uploads[1][:2] == (local, None) and uploads[1][2]["eval_dirs"] == ()
    assert (local / "eval_val" / "results.json").is_file()


def test_a_stage_refuses_a_model_trained_on_other_classes_naming_its_folder(stage1_run):
    from types import SimpleNamespace

    from cadel_modeling.stages.frame import StageFrame
    from cadel_modeling.utils.errors import ModelError
    model_dir = stage1_run / "best_model"
    five_classes = SimpleNamespace(num_classes=5, class_names=[str(i) for i in range(5)], class_counts=[1] * 5)
    with pytest.raises(ModelError, match=f"^{model_dir} was trained for 4 classes but the dataset has 5; "):
        StageFrame(RunConfig(), model_dir / "tracking").load_checked_model(model_dir, five_classes)


def test_an_evaluation_reports_the_models_learned_exit_weights_and_test_agnostic_rows_when_asked(stage1_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(stage1_run / "best_model", model)
    (model / "ensemble.json").write_text(json.dumps({"weights": [0.5, 0.0, 0.5], "tau": 1.0}))  # as stage 2 saves
    assert evaluate.main(["--eval_model", str(model), "--eval_split", "val", "--eval_test_agnostic", "true"]) == 0
    saved = json.loads((model / "eval_val" / "results.json").read_text())
    assert "learned exit weights 0.50/0.00/0.50, tau=1" in saved["results"]
    assert saved["ensemble"] == {"weights": [0.5, 0.0, 0.5], "tau": 1.0} and saved["test_agnostic"]


def test_stage2_knows_whether_stage1_finished_from_its_summary_and_its_logged_epochs(stage1_run, tmp_path):
    from cadel_modeling.stages.stage2 import stage1_progress
    run = tmp_path / "run"
    shutil.copytree(stage1_run, run)
    assert stage1_progress(run) == {"finished": True, "epochs_done": 2, "epochs": 2, "summary": True}
    config_text = (run / "config.yaml").read_text()
    assert "\nepochs: 2\n" in config_text
    (run / "config.yaml").write_text(config_text.replace("\nepochs: 2\n", "\nepochs: 3\n"))
    assert stage1_progress(run) == {"finished": False, "epochs_done": 2, "epochs": 3, "summary": True}  # extended
    (run / "stage1_summary.json").unlink()
    (run / "config.yaml").write_text(config_text)
    assert stage1_progress(run) == {"finished": False, "epochs_done": 2, "epochs": 2, "summary": False}  # stopped
    (run / "config.yaml").unlink()
    (run / "train_log.jsonl").unlink()
    assert stage1_progress(run) == {"finished": False, "epochs_done": 0, "epochs": None, "summary": False}
