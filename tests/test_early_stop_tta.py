"""Early stopping (train.early_stop) and test-time augmentation (train.tta: hflip), issue 19:
SPEC "Training extras". Tiny digits runs in-process."""

import csv
import json

import pytest
import torch

from clrctl.engine.callbacks import StopAt
from clrctl.errors import Interrupted

# Patience 2 on a run that peaks early: the stop comes mid-run (step 30 of 88).
STOP = {"epochs": 4, "eval_every": 5, "early_stop": {"patience": 2}}


def summary_of(path):
    return json.loads((path / "summary.json").read_text())


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_early_stop_ends_the_run_completed_and_says_why(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config(train=STOP)
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 0
    summary = summary_of(tmp_path / "run")
    assert summary["status"] == "completed" and summary["stopped_early"] is True
    assert summary["steps"] < summary["planned_steps"]
    assert summary["stop_reason"].startswith("early stopping: val_acc did not improve in 2 evaluations")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "completed"
    out = capsys.readouterr().out
    assert f"stopped at step {summary['steps']} of {summary['planned_steps']}: early stopping" in out
    # It stopped after the evaluation that made it: metrics.csv ends on that evaluation's row.
    last = rows(tmp_path / "run" / "metrics.csv")[-1]
    assert int(last["step"]) + 1 == summary["steps"] and last["val_acc"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_early_stop_that_never_fires_says_false_and_without_the_key_says_nothing(cli, tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 2, "eval_every": 5, "early_stop": {"patience": 1000, "metric": "val_loss"}})
    assert cli("train", cfg, "--run-dir", tmp_path / "patient", "-q") == 0
    assert cli("train", tiny_config("plain", train={"epochs": 2, "eval_every": 5}), "--run-dir", tmp_path / "plain",
               "-q") == 0
    patient, plain = summary_of(tmp_path / "patient"), summary_of(tmp_path / "plain")
    assert patient["stopped_early"] is False and patient["steps"] == patient["planned_steps"]
    assert "stop_reason" not in patient
    assert not {"stopped_early", "final_tta_val_acc", "stop_reason"} & set(plain)
    # watching changes nothing of the training itself
    assert (tmp_path / "patient" / "metrics.csv").read_bytes() == (tmp_path / "plain" / "metrics.csv").read_bytes()


def test_min_delta_counts_small_gains_as_none(cli, tiny_config, tmp_path):
    strict = tiny_config("strict", train={**STOP, "epochs": 8, "early_stop": {"patience": 3, "min_delta": 0.5}})
    assert cli("train", strict, "--run-dir", tmp_path / "strict", "-q") == 0
    summary = summary_of(tmp_path / "strict")
    # The evaluations in metrics.csv, judged by hand: a gain counts only above min_delta.
    evals = [(int(r["step"]) + 1, float(r["val_acc"])) for r in rows(tmp_path / "strict" / "metrics.csv") if r["val_acc"]]
    best, waited = None, 0
    for step, acc in evals:
        best, waited = (acc, 0) if best is None or acc - 0.5 > best else (best, waited + 1)
        if waited == 3:
            break
    assert (summary["steps"], summary["stopped_early"]) == (step, True) and step == evals[-1][0]
    assert "by more than 0.5" in summary["stop_reason"]


def test_early_stop_stops_the_run_not_just_its_stage(cli, tiny_config, tmp_path):
    stages = [{"name": "one", "epochs": 3}, {"name": "two", "epochs": 3}]
    cfg = tiny_config(stages=stages, train={"epochs": None, "eval_every": 5, "early_stop": {"patience": 2}})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 0
    summary = summary_of(tmp_path / "run")
    assert summary["stopped_early"] and summary["steps"] < 3 * 22  # inside stage one
    assert summary["stages"] == []  # neither stage finished
    assert {r["stage"] for r in rows(tmp_path / "run" / "metrics.csv")} == {"one"}


def test_each_seed_stops_on_its_own(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config(train=STOP)
    assert cli("train", cfg, "--seeds", "0..2", "--run-dir", tmp_path / "group", "-q") == 0
    summaries = [summary_of(tmp_path / "group" / f"seed-{s}") for s in range(3)]
    assert all(s["status"] == "completed" and s["stopped_early"] for s in summaries)
    assert len({s["steps"] for s in summaries}) > 1  # each at its own step
    out = capsys.readouterr().out
    for seed, summary in enumerate(summaries):
        assert f"seed {seed}: stopped at step {summary['steps']} of" in out


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_resume_keeps_the_patience(tiny_config, tmp_path, old_checkpoint):
    from clrctl.config.schema import load_config
    from clrctl.runs.training import resume_training, start_training

    config = load_config(tiny_config(train={**STOP, "early_stop": {"patience": 3}}))
    start_training(config, run_dir=tmp_path / "ref")
    ref = summary_of(tmp_path / "ref")
    assert ref["stopped_early"]
    # Stopped after evaluations that did not improve: the patience already spent must survive.
    cut_at = ref["steps"] - 5
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(cut_at),))
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=False)
    assert saved["state"]["extras"]["early_stop"]["waited"] == 2
    if old_checkpoint:  # written before early stopping existed: it resumes, its patience afresh
        del saved["state"]["extras"]
        torch.save(saved, last)
    resume_training(tmp_path / "cut")
    cut = summary_of(tmp_path / "cut")
    if old_checkpoint:
        assert cut["status"] == "completed" and cut["steps"] > ref["steps"]
        return
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    assert (cut["steps"], cut["stopped_early"], cut["stop_reason"]) == (ref["steps"], True, ref["stop_reason"])


def test_tta_adds_the_flipped_evaluation_and_leaves_the_rest(cli, tiny_config, tmp_path):
    from clrctl.config.schema import load_config
    from clrctl.engine.setup import build_setup
    from clrctl.engine.step import evaluate

    cfg = tiny_config(train={"epochs": 2, "eval_every": 5, "tta": "hflip"})
    assert cli("train", cfg, "--run-dir", tmp_path / "tta", "-q") == 0
    assert cli("train", tiny_config("plain"), "--run-dir", tmp_path / "plain", "-q") == 0
    # metrics.csv is the plain evaluation's, byte for byte; epochs.csv has one more column
    assert (tmp_path / "tta" / "metrics.csv").read_bytes() == (tmp_path / "plain" / "metrics.csv").read_bytes()
    epochs = rows(tmp_path / "tta" / "epochs.csv")
    assert list(epochs[0])[-1] == "tta_val_acc" and all(0 <= float(r["tta_val_acc"]) <= 1 for r in epochs)
    plain_epochs = rows(tmp_path / "plain" / "epochs.csv")
    assert [r["val_acc"] for r in epochs] == [r["val_acc"] for r in plain_epochs]
    summary = summary_of(tmp_path / "tta")
    setup = build_setup(load_config(cfg))
    setup.model.load_state_dict(torch.load(tmp_path / "tta" / "checkpoints" / "last.pt", weights_only=False)["model"])
    flipped = evaluate(setup.model, setup.data.val, setup.loss_fn, hflip=True)[1]
    assert summary["final_tta_val_acc"] == flipped == float(epochs[-1]["tta_val_acc"])
    assert summary["final_val_acc"] == evaluate(setup.model, setup.data.val, setup.loss_fn)[1]


def test_hflip_averages_the_logits_of_each_image_and_its_mirror():
    from clrctl.engine.step import evaluate

    class Source:
        device = torch.device("cpu")

        def batches(self, epoch):
            yield torch.arange(8.0).reshape(2, 1, 2, 2), torch.tensor([0, 1])

    class LeftColumn(torch.nn.Module):  # logits (x[..., 0], x[..., 1]) summed: flipping swaps them
        def forward(self, x):
            return torch.stack([x[..., 0].sum((1, 2)), x[..., 1].sum((1, 2))], 1)

    model = LeftColumn()
    plain, flipped = evaluate(model, Source(), torch.nn.CrossEntropyLoss()), evaluate(
        model, Source(), torch.nn.CrossEntropyLoss(), hflip=True)
    assert plain[1] == 0.5  # column 1 always wins
    assert flipped[0] == pytest.approx(torch.log(torch.tensor(2.0)).item())  # equal logits: loss ln 2


@pytest.mark.parametrize("train, says", [
    ({"early_stop": {"patience": 0}}, "train.early_stop.patience:"),
    ({"early_stop": {"patience": -1}}, "train.early_stop.patience:"),
    ({"early_stop": {"min_delta": -0.1}}, "train.early_stop.min_delta:"),
    ({"early_stop": {"metric": "val_accuracy"}}, "train.early_stop.metric:"),
    ({"early_stop": {"paitence": 3}}, "train.early_stop.paitence: unknown key (did you mean 'patience'?)"),
    ({"early_stop": {"metric": "val_acc"}, "loss": "mse"}, "train.early_stop.metric: train.loss: mse measures no accuracy"),
    ({"tta": "vflip"}, "train.tta:"),
    ({"tta": "hflip", "loss": "mse"}, "train.tta: train.loss: mse"),
])
def test_bad_keys_are_one_line_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys, train, says):
    cfg = tiny_config(train={"epochs": 1, **train})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + says) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_tta_on_flat_features_is_refused(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config(dataset={"name": "synthetic", "batch_size": 64}, train={"epochs": 1, "tta": "hflip"})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.tta: hflip needs images of shape (C, H, W)") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_stop_together_after_the_evaluation_that_asked(cli, tiny_config, tmp_path):
    """Evaluations every 5 steps, host syncs every 25: the stop must not wait for the next sync."""
    from test_robustness import spawn

    cfg = tiny_config(train={**STOP, "log_every": 25, "tta": "hflip"})
    assert cli("train", cfg, "--run-dir", tmp_path / "one", "-q") == 0
    proc = spawn("train", cfg, "--nproc", "2", "--run-dir", tmp_path / "two", "-q")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    one, two = summary_of(tmp_path / "one"), summary_of(tmp_path / "two")
    assert one["steps"] % 25 and one["stopped_early"]  # (between two syncs)
    assert (two["status"], two["steps"], two["stopped_early"]) == ("completed", one["steps"], True)
    assert two["final_tta_val_acc"] == pytest.approx(one["final_tta_val_acc"], abs=1e-9)
    assert len(rows(tmp_path / "two" / "metrics.csv")) == two["steps"]
