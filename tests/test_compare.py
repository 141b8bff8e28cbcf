"""``cadel-compare``'s numbers and refusals, without training: pairing against the baseline, the table, the rows a
stage-2 result gives (the robust exit rule included), the committed grids regenerated into the README tables, and
bad input refused before anything is written. The command itself runs from the installed wheel (test_wheel.py) and
through benchmarks/lt_compare.py (test_benchmarks.py)."""
import importlib.util
import json
import sys

import pytest

from cadel_modeling.compare import cli
from cadel_modeling.compare.recipes import METRICS, run_rows
from cadel_modeling.compare.runs import RUN_RECORD, Launcher, RunFailed, run_logged, stage1_command
from cadel_modeling.compare.tables import aggregate, markdown, paired, rule_check

from conftest import REPO


def run(seed, label, top1):
    return {"seed": seed, "rows": {label: dict.fromkeys(METRICS, top1)}}


def test_each_recipe_is_paired_with_the_baseline_on_the_same_seed():
    runs = [run(0, "CE + post-hoc LA", 0.70), run(0, "CADEL", 0.72), run(1, "CE + post-hoc LA", 0.75),
            run(1, "CADEL", 0.74), run(2, "CADEL", 0.99)]          # seed 2 has no baseline: left out of the pairs
    diffs = paired(runs)
    assert set(diffs) == {"CADEL"}
    assert diffs["CADEL"]["values"] == pytest.approx([2.0, -1.0])
    assert diffs["CADEL"]["mean"] == pytest.approx(0.5) and diffs["CADEL"]["std"] == pytest.approx(4.5 ** 0.5)
    assert (diffs["CADEL"]["wins"], diffs["CADEL"]["n"]) == (1, 2)
    assert paired([run(0, "CADEL", 0.7)]) == {}
    table = markdown(aggregate(runs[:4]), diffs).splitlines()
    assert table[0].endswith("| Δ All vs CE + post-hoc LA (paired) |")
    assert table[2] == "| CE + post-hoc LA | " + "72.5 ± 3.5 | " * 5 + "baseline |"
    assert table[3] == "| CADEL | " + "73.0 ± 1.4 | " * 5 + "+0.5 ± 2.1 (1/2 seeds ahead) |"
    assert "Δ" not in markdown(aggregate(runs[:1]), {})


@pytest.mark.parametrize("grid, doc", [("if100", "README.md"), ("if10", "benchmarks/README.md"),
                                       ("step_if100", "benchmarks/README.md"), ("if100_mixup0", "docs/presets.md")])
def test_the_committed_grids_regenerate_their_readme_tables(grid, doc):
    saved = json.loads((REPO / "benchmarks" / "results" / f"lt_compare_fashion_mnist_lt_{grid}.json").read_text())
    agg, diffs = aggregate(saved["runs"]), paired(saved["runs"])
    assert agg == saved["aggregate"] and diffs == saved["paired_vs_baseline"]["All"]
    assert markdown(agg, diffs) in (REPO / doc).read_text()


def stage2_result(strong):
    """A stage2_results.json's test scores: the model's rule at tau 1 and 0, the learned weights, an exit alone."""
    def metrics(top1):
        return {"accuracy": top1, "many_accuracy": top1, "medium_accuracy": None, "few_accuracy": top1, "ece": 0.1}
    test = {"last exit (CNN rule), tau=1": metrics(0.70), "last exit (CNN rule), tau=0": metrics(0.60),
            "learned exit weights 0.30/0.00/0.70, tau=0.75": metrics(0.73), "exit 1 alone, tau=1": metrics(0.5)}
    return {"tau": 1.0, "test": test, "rule_evidence": None if strong is None else {"strong": strong}}


def test_the_robust_row_takes_the_learned_weights_only_with_strong_evidence():
    for strong, robust in ((False, 0.70), (True, 0.73)):
        rows = run_rows("cadel", stage2_result(strong))
        assert {k: v["All"] for k, v in rows.items()} == {
            "CADEL": 0.70, "CADEL + exit weights on val": 0.73, "CADEL + robust exit rule": robust}
        assert rows["CADEL"]["Medium"] is None and rows["CADEL"]["ECE"] == 0.1
    assert "CADEL + robust exit rule" not in run_rows("cadel", stage2_result(None))  # results older than the rule
    assert {k: v["All"] for k, v in run_rows("ce", stage2_result(None)).items()} == {"CE": 0.60,
                                                                                     "CE + post-hoc LA": 0.70}


def cadel_run(recipe, seed, paper, robust, strong):
    label = {"cadel": "CADEL", "cadel_balanced": "CADEL + Balanced Softmax"}[recipe]
    evidence = {"strong": strong, "fraction_ahead": 0.97 if strong else 0.6}
    return {"recipe": recipe, "seed": seed, "rule_evidence": evidence,
            "rows": {label: {"All": paper}, f"{label} + exit weights on val": {"All": 0.9},
                     f"{label} + robust exit rule": {"All": robust}}}


def test_the_rule_check_compares_the_robust_rule_with_the_papers_on_every_cadel_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("robust_rule", REPO / "benchmarks" / "robust_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    robust_rule = module.main
    runs = [cadel_run("cadel", 0, 0.70, 0.73, True), cadel_run("cadel_balanced", 1, 0.71, 0.71, False),
            {"recipe": "ce", "seed": 0, "rule_evidence": None, "rows": {"CE + post-hoc LA": {"All": 0.6}}},
            {"recipe": "cadel", "seed": 2, "rule_evidence": None, "rows": {"CADEL": {"All": 0.5}}}]  # predates it
    checks = rule_check(runs)
    assert [(c["recipe"], c["seed"], c["strong"]) for c in checks] == [("cadel", 0, True), ("cadel_balanced", 1, False)]
    assert [c["difference"] for c in checks] == pytest.approx([3.0, 0.0])
    assert checks[0]["paper"] == pytest.approx(70.0) and checks[0]["robust"] == pytest.approx(73.0)
    grid = tmp_path / "lt_compare_x.json"
    grid.write_text(json.dumps({"runs": runs}))
    assert robust_rule([str(grid)]) == 0
    out = capsys.readouterr().out
    assert "| x | cadel | 0 | 70.0 | 73.0 | +3.0 | 97.0% (kept) |" in out and "+1.50 points on average" in out
    runs.append(cadel_run("cadel", 3, 0.70, 0.694, True))            # one run 0.6 below the paper's rule: fails
    grid.write_text(json.dumps({"runs": runs}))
    assert robust_rule([str(grid)]) == 1 and "FAIL" in capsys.readouterr().out


def test_launchers_start_the_stages_with_this_interpreter(tmp_path):
    accelerate = stage1_command(Launcher("accelerate", ["--num_processes", "2"]), tmp_path, "ce", 3, ["--config", "x"],
                                ["--epochs", "1"])
    assert accelerate == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m",
                          "cadel_modeling.train_stage1", "--config", "x", "--exit_stages", "[]", "--gamma", "0",
                          "--base_weight", "1", "--base_loss", "ce", "--epochs", "1", "--seed", "3", "--output_dir",
                          str(tmp_path)]
    assert Launcher("python").command("m") == [sys.executable, "-m", "m"]


def test_a_failed_stage_reports_its_error_line_and_exit_code(tmp_path):
    log = tmp_path / "log.txt"
    refuse = [sys.executable, "-c", "import sys; print('error: --data_dir x holds no train/ folder'); sys.exit(2)"]
    with pytest.raises(RunFailed) as exc:
        run_logged(refuse, log, "stage 1 of ce seed 0")
    assert exc.value.exit_code == 2
    assert str(exc.value) == (f"stage 1 of ce seed 0 failed (exit 2): --data_dir x holds no train/ folder; its "
                              f"output is in {log}")
    with pytest.raises(RunFailed) as exc:
        run_logged([sys.executable, "-c", "raise SystemExit(3)"], log, "stage 2 of cadel seed 1")
    assert exc.value.exit_code == 1 and "failed (exit 3); its output" in str(exc.value)
    assert log.read_text().count("$ ") == 2


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "grid"
    assert cli.main(["--recipes", "ce", "--out", str(out), "--", "--epoch", "1"]) == 2
    assert capsys.readouterr().err == "error: unknown option '--epoch'; did you mean '--epochs' (alias " \
                                      "--num_train_epochs)?\n"
    assert not out.exists()
    # a finished run of other flags in the same --out: refused, not mixed into this table
    run_dir = out / "ce" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_RECORD).write_text(json.dumps({"command": "python -m cadel_modeling.train_stage1 --config x"}))
    before = sorted(p.name for p in out.rglob("*"))
    assert cli.main(["--recipes", "ce", "--seeds", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir} holds a run trained by `python -m cadel_modeling.train_stage1 --config "
                          f"x`, not by this comparison's flags") and err.count("\n") == 1
    assert sorted(p.name for p in out.rglob("*")) == before
    with pytest.raises(SystemExit) as exc:  # argparse: usage and one line, exit 2
        cli.main(["--recipes", "cadle"])
    assert exc.value.code == 2 and "invalid choice: 'cadle'" in capsys.readouterr().err


def test_resuming_skips_what_is_done_and_rerun_stage2_redoes_only_stage_2(tmp_path, monkeypatch):
    from cadel_modeling.compare import runs

    calls = []

    def fake_run(cmd, log, what):  # stage 2 writes its results, as the real one does
        calls.append(what)
        if "stage 2" in what:
            write(run_dir / "stage2_logit_adjustment" / "stage2_results.json",
                  {**stage2_result(True), "ensemble": None})
        return 5.0

    def write(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    monkeypatch.setattr(runs, "run_logged", fake_run)
    run_dir, log, launcher = tmp_path / "cadel" / "seed0", tmp_path / "log.txt", Launcher("python")
    write(run_dir / "stage1_summary.json", {})  # stage 1 finished, stage 2 not yet
    first = runs.train(run_dir, "cadel", 0, [], [], log, launcher)
    assert calls == ["stage 2 of cadel seed 0"] and (first["stage1_s"], first["stage2_s"]) == (0.0, 5.0)
    assert first["rows"]["CADEL + robust exit rule"]["All"] == 0.73 and first["rule_evidence"] == {"strong": True}
    assert runs.train(run_dir, "cadel", 0, [], [], log, launcher) == first and len(calls) == 1  # read back
    (run_dir / RUN_RECORD).unlink()  # stopped after stage 2 but before its record: stage 2 is not redone
    assert runs.train(run_dir, "cadel", 0, [], [], log, launcher)["rows"] == first["rows"] and len(calls) == 1
    again = runs.train(run_dir, "cadel", 0, [], [], log, launcher, rerun_stage2=True)
    assert calls == ["stage 2 of cadel seed 0"] * 2 and again["stage2_s"] == 5.0
    (run_dir / "stage1_summary.json").unlink()  # an unfinished stage 1 is trained, then stage 2 again
    (run_dir / RUN_RECORD).unlink()
    runs.train(run_dir, "cadel", 0, [], [], log, launcher)
    assert calls[2:] == ["stage 1 of cadel seed 0", "stage 2 of cadel seed 0"]


def fake_train(calls, strong, seconds):
    """A stand-in for ``runs.train``: records (run_dir, recipe, seed, stage-1 flags) and returns a run whose
    stage 2 took ``seconds`` per stage, with the robust rule's evidence ``strong``."""
    def train(run_dir, recipe, seed, base, extra, log, launcher, rerun_stage2):
        calls.append((run_dir, recipe, seed, base))
        return {"recipe": recipe, "seed": seed, "stage1_s": seconds, "stage2_s": seconds,
                "rows": run_rows(recipe, stage2_result(strong))}
    return train


def test_the_grid_reports_progress_reads_finished_runs_back_and_writes_its_outputs(tmp_path, monkeypatch, capsys):
    from cadel_modeling.compare.runs import shown

    out = tmp_path / "grid"
    calls = []
    monkeypatch.setattr(cli, "train", fake_train(calls, strong=True, seconds=2.5))
    finished = out / "ce" / "seed0"  # finished earlier, with this grid's flags
    finished.mkdir(parents=True)
    command = shown(stage1_command(Launcher("accelerate"), finished, "ce", 0, ["--config", "fashion_mnist_lt"],
                                   ["--hflip", "true"]))
    (finished / RUN_RECORD).write_text(json.dumps({"command": command}))
    assert cli.main(["--recipes", "ce", "cadel", "--seeds", "0", "1", "--out", str(out), "--", "--hflip", "true"]) == 0
    trained = [(recipe, seed) for _, recipe, seed, _ in calls]
    assert trained == [("ce", 0), ("cadel", 0), ("ce", 1), ("cadel", 1)]  # train() reads the finished one back
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"4 runs in {out} (accelerate launcher): fashion_mnist_lt data, training split cut to IF 100 "
                        f"(exp profile), resnet18, 30 epochs, mixup alpha 0.5")
    cadel = "CADEL 70.0, CADEL + exit weights on val 73.0, CADEL + robust exit rule 73.0 (5 s)"
    assert lines[1:8] == ["[1/4] ce seed 0: CE 60.0, CE + post-hoc LA 70.0 (read back)",
                          f"[2/4] cadel seed 0: training, log in {out / 'log.txt'}", f"[2/4] cadel seed 0: {cadel}",
                          f"[3/4] ce seed 1: training, log in {out / 'log.txt'}",
                          "[3/4] ce seed 1: CE 60.0, CE + post-hoc LA 70.0 (5 s)",
                          f"[4/4] cadel seed 1: training, log in {out / 'log.txt'}", f"[4/4] cadel seed 1: {cadel}"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["paired_vs_baseline"]["All"]["CADEL + robust exit rule"]["values"] == pytest.approx([3.0, 3.0])
    assert saved["how"].startswith(f"`cadel-compare --recipes ce cadel --seeds 0 1 --out {out} -- --hflip true`: "
                                   f"fashion_mnist_lt, "
                                   f"seeds [0, 1]; best epoch")
    assert markdown(saved["aggregate"], saved["paired_vs_baseline"]["All"]) in (out / "table.md").read_text()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_is_two_epochs_at_if_10_over_any_default_each_flag_once(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "train", fake_train(calls, strong=None, seconds=1.0))
    for defaults in ({}, {"epochs": 30, "imb_factor": 100.0}):  # benchmarks/lt_compare.py's defaults
        assert cli.main(["--quick", "--recipes", "ce"], out_root=str(tmp_path), **defaults) == 0
    base = ["--config", "fashion_mnist_lt", "--epochs", "2", "--imb_factor", "10", "--n_max", "60", "--val_per_class",
            "10", "--backbone", "test_resnet", "--batch_size", "16", "--eval_batch_size", "100"]
    run_dir = tmp_path / "fashion_mnist_lt_if10_e2_quick" / "ce" / "seed0"
    assert [(folder, flags) for folder, _, _, flags in calls] == [(run_dir, base)] * 2
    assert "fashion_mnist_lt, IF 10, 2 epochs, seeds [0]" in capsys.readouterr().out


def test_a_token_given_for_stage_1_is_in_no_file_or_line_the_comparison_writes(tmp_path, monkeypatch, capsys):
    """A private Hub dataset needs ``-- --hub_token``: the stages get it, the grid's records, log, table and plot
    do not."""
    from cadel_modeling.compare.runs import shown
    token = "hf_FAKEsecret123"
    out = tmp_path / "grid"
    given, titles = [], []
    stand_in = fake_train([], strong=False, seconds=1.0)
    monkeypatch.setattr(cli, "train", lambda run_dir, recipe, seed, base, extra, *rest: (
        given.append(list(extra)), stand_in(run_dir, recipe, seed, base, extra, *rest))[1])
    real_plot = cli.plot
    monkeypatch.setattr(cli, "plot", lambda agg, diffs, path, title: (titles.append(title),
                                                                      real_plot(agg, diffs, path, title)))
    assert cli.main(["--recipes", "ce", "cadel", "--seeds", "0", "--out", str(out), "--", "--hub_token", token]) == 0
    assert given == [["--hub_token", token]] * 2  # the stages themselves get the token
    assert titles and token not in titles[0] and "--hub_token ***" in titles[0]
    saved = json.loads((out / "results.json").read_text())
    assert saved["extra_stage1_flags"] == ["--hub_token", "***"] and "-- --hub_token ***`" in saved["how"]
    # what a real run records: its command in lt_compare_run.json and the grid's log
    cmd = stage1_command(Launcher("python"), out / "ce" / "seed0", "ce", 0, ["--config", "fashion_mnist_lt"],
                         ["--hub_token", token])
    assert token in cmd and "--hub_token ***" in shown(cmd)
    run_logged([sys.executable, "-c", "pass", "--hub_token", token], out / "log.txt", "a stand-in stage")
    assert "--hub_token ***" in (out / "log.txt").read_text()
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"results.json", "table.md", "compare.png", "log.txt"}
    assert not [p for p in written if token.encode() in p.read_bytes()]
    assert token not in capsys.readouterr().out
