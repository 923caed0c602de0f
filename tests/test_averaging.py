"""Averaged weights (train.ema, train.swa) and snapshot ensembles (train.snapshots): where the
cycles end, what is averaged, what is written, and that a resumed run continues them exactly."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from clrctl.config.schema import PolicyConfig, Stage, load_config
from clrctl.engine.callbacks import Callback, StopAt
from clrctl.errors import Interrupted
from clrctl.optim.cycles import snapshot_steps, swa_steps
from clrctl.optim.policies import cycle_ends, preview
from clrctl.config.schema import OptimizerConfig

SPE = 22  # tiny_config: 1347 digits / batch 64


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def summary(run):
    return json.loads((run / "summary.json").read_text())


def weights(path):
    return torch.load(path, weights_only=True)


# -- where cycles end ----------------------------------------------------------------------------


def test_cycle_ends_are_the_lr_minima_of_cyclic_policies_and_sgdr_restarts():
    tri = PolicyConfig(name="triangular2", bounds=[0.01, 0.1], stepsize=5)
    assert cycle_ends(tri, SPE, 35) == [10, 20, 30]
    trace = [lr for _, lr, _ in preview(tri, OptimizerConfig(), SPE, 41)]
    assert all(trace[k] == pytest.approx(0.01) for k in (10, 20, 30))  # the LR at the next step: base
    sgdr = PolicyConfig(name="sgdr", bounds=[0.001, 0.1], stepsize=4, t_mult=2)
    assert cycle_ends(sgdr, SPE, 28) == [4, 12, 28]
    trace = [lr for _, lr, _ in preview(sgdr, OptimizerConfig(), SPE, 29)]
    assert all(trace[k] == pytest.approx(0.1) and trace[k - 1] < trace[k - 2] for k in (4, 12, 28))  # restarts after
    assert cycle_ends(PolicyConfig(name="one_cycle", bounds=[0.01, 0.1]), SPE, 30) is None
    assert cycle_ends(tri, SPE, 9) == []


def test_snapshot_and_swa_steps_per_stage():
    cyclic = Stage("a", PolicyConfig(name="triangular", bounds=[0.01, 0.1], stepsize=5), OptimizerConfig(), None, 25)
    fixed = Stage("b", PolicyConfig(name="fixed", lr=0.01), OptimizerConfig(), None, 30)
    assert snapshot_steps([cyclic, fixed], 10) == [10, 20, 55]  # cycle ends; a stage without cycles: its end
    assert swa_steps([cyclic, fixed], 10, 0) == [10, 20, 30, 40, 50, 55]  # then epoch ends (and the run's end)
    assert swa_steps([cyclic, fixed], 10, 25) == [30, 40, 50, 55]


# -- what is averaged and written ------------------------------------------------------------------


class TorchEma(Callback):
    """torch's own AveragedModel updated after every optimizer step: the reference."""

    def __init__(self, decay):
        self.decay = decay

    def on_start(self, loop):
        self.ref = AveragedModel(loop.setup.model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        loop.after_each_step(lambda: self.ref.update_parameters(loop.setup.model))


def test_ema_is_torchs_averaged_model_updated_after_every_step(tiny_config, tmp_path):
    from clrctl.runs.training import start_training

    config = load_config(tiny_config("ema", train={"ema": 0.9, "log_every": 1000}))
    ref = TorchEma(0.9)
    run, result = start_training(config, run_dir=tmp_path / "run", callbacks=(ref,))
    ema = weights(run / "checkpoints" / "ema.pt")
    assert ema.keys() == ref.ref.module.state_dict().keys()
    for key, value in ref.ref.module.state_dict().items():
        assert torch.equal(ema[key], value), key
    epochs = rows(run / "epochs.csv")
    assert list(epochs[0])[-2:] == ["ema_val_loss", "ema_val_acc"]
    assert result["final_ema_val_acc"] == float(epochs[-1]["ema_val_acc"])
    assert not torch.equal(ema["1.weight"], weights(run / "checkpoints" / "last.pt")["model"]["1.weight"])
    # ema.pt is a state_dict that model.weights takes
    from clrctl.engine.setup import build_setup

    again = build_setup(load_config(tiny_config("from-ema", model={"name": "mlp", "hidden": [32],
                                                                    "weights": str(run / "checkpoints" / "ema.pt")})))
    assert torch.equal(again.model.state_dict()["1.weight"], ema["1.weight"])


def test_swa_averages_the_cycle_ends_and_snapshots_are_taken_exactly_there(tiny_config, tmp_path):
    from clrctl.runs.training import start_training

    # no evaluation or flush falls on the cycle ends 14 and 28 by itself (epochs end at 22, 44)
    config = load_config(tiny_config("swa", train={"swa": {"start": 14}, "snapshots": True, "snapshot_ensemble": 2,
                                                   "log_every": 1000, "eval_every": None}))
    run, result = start_training(config, run_dir=tmp_path / "run")
    snaps = rows(run / "snapshots.csv")
    assert [int(r["step"]) for r in snaps] == [14, 28, 42]
    files = [weights(run / "checkpoints" / f"snapshot-{k}.pt") for k in (14, 28, 42)]
    swa = weights(run / "checkpoints" / "swa.pt")
    for key in swa:
        assert torch.allclose(swa[key], sum(f[key] for f in files) / 3, atol=1e-6), key
    assert not torch.equal(files[0]["1.weight"], files[1]["1.weight"])
    assert result["ensemble_val_acc"] == float(snaps[-1]["ensemble_val_acc"])
    assert 0.5 < result["swa_val_acc"] <= 1.0
    # each snapshot's own accuracy is that of its weights
    from clrctl.engine.setup import build_setup
    from clrctl.engine.step import evaluate

    setup = build_setup(config)
    setup.model.load_state_dict(files[1])
    assert evaluate(setup.model, setup.data.val, setup.loss_fn)[1] == pytest.approx(float(snaps[1]["val_acc"]))
    # the ensemble of the last 2: the mean of their softmax
    probs = []
    for f in files[1:]:
        setup.model.load_state_dict(f)
        with torch.no_grad():
            probs.append(torch.cat([torch.softmax(setup.model(x), 1) for x, _ in setup.data.val.batches(0)]))
    labels = torch.cat([y for _, y in setup.data.val.batches(0)])
    ensemble = float((torch.stack(probs).mean(0).argmax(1) == labels).float().mean())
    assert float(snaps[2]["ensemble_val_acc"]) == pytest.approx(ensemble)


def test_swa_without_cycles_averages_epoch_ends_and_recomputes_batchnorm(tiny_config, tmp_path):
    from clrctl.runs.training import start_training

    config = load_config(tiny_config("swa-bn", model={"name": "resnet20"},
                                     policy={"name": "cosine", "bounds": [0.001, 0.05]},
                                     train={"epochs": 2, "swa": {"start": "1 epochs"}, "eval_every": None}))
    run, result = start_training(config, run_dir=tmp_path / "run")
    swa = weights(run / "checkpoints" / "swa.pt")
    last = weights(run / "checkpoints" / "last.pt")["model"]
    stats = [k for k in swa if k.endswith("running_mean")]
    assert stats and any(not torch.equal(swa[k], last[k]) for k in stats)  # update_bn ran on the average
    assert result["swa_val_acc"] is not None


# -- resume equals the uninterrupted run -----------------------------------------------------------


def _cut_and_resume(config, tmp_path, stop_at):
    from clrctl.runs.training import resume_training, start_training

    start_training(config, run_dir=tmp_path / "ref")
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(stop_at),))
    assert summary(tmp_path / "cut")["steps"] == stop_at
    resume_training(tmp_path / "cut")
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert (cut / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    untimed = [[{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows(d / "epochs.csv")] for d in (ref, cut)]
    assert untimed[0] == untimed[1]
    drop = ("elapsed_s",)
    assert {k: v for k, v in summary(cut).items() if k not in drop} == \
        {k: v for k, v in summary(ref).items() if k not in drop}
    return ref, cut


def _same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("stop_at", [17, 22])  # mid-epoch; an epoch end
def test_resume_with_ema_equals_the_uninterrupted_run(tiny_config, tmp_path, stop_at):
    config = load_config(tiny_config("ema", train={"ema": 0.95, "checkpoint_every": 0}))
    ref, cut = _cut_and_resume(config, tmp_path, stop_at)
    _same_weights(ref / "checkpoints" / "ema.pt", cut / "checkpoints" / "ema.pt")


def test_resume_with_swa_equals_the_uninterrupted_run(tiny_config, tmp_path):
    config = load_config(tiny_config("swa", train={"swa": {"start": 14}, "checkpoint_every": 0}))
    ref, cut = _cut_and_resume(config, tmp_path, 28)  # at a cycle end: averaged before the checkpoint
    _same_weights(ref / "checkpoints" / "swa.pt", cut / "checkpoints" / "swa.pt")


@pytest.mark.parametrize("stop_at", [20, 28])  # between cycle ends; at one
def test_resume_with_snapshots_equals_the_uninterrupted_run(tiny_config, tmp_path, stop_at):
    config = load_config(tiny_config("snap", train={"snapshots": True, "snapshot_ensemble": 2,
                                                    "checkpoint_every": 0}))
    ref, cut = _cut_and_resume(config, tmp_path, stop_at)
    assert (cut / "snapshots.csv").read_bytes() == (ref / "snapshots.csv").read_bytes()
    for k in (14, 28, 42):
        _same_weights(ref / "checkpoints" / f"snapshot-{k}.pt", cut / "checkpoints" / f"snapshot-{k}.pt")


def test_a_checkpoint_without_the_averaging_parts_still_resumes(tiny_config, tmp_path):
    from clrctl.runs.training import resume_training, start_training

    config = load_config(tiny_config("old", train={"ema": 0.9, "checkpoint_every": 0}))
    with pytest.raises(Interrupted):
        start_training(config, run_dir=tmp_path / "cut", callbacks=(StopAt(22),))
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    del saved["ema"]  # as written before averaging existed
    torch.save(saved, last)
    _, result = resume_training(tmp_path / "cut")
    assert result["status"] == "completed" and result["final_ema_val_acc"] is not None


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("train, message", [
    ({"ema": 1.0}, "train.ema:"),
    ({"ema": 0}, "train.ema:"),
    ({"swa": {"start": "3 epochs"}}, "train.swa.start: 3 epochs (66 steps) is after the run's end (44 steps)"),
    ({"swa": {"start": 43}}, "train.swa.start: 43 (43 steps) leaves no cycle end to average"),
    ({"swa": {}}, "train.swa.start:"),
    ({"snapshots": True, "epochs": 1}, None),  # 22 steps hold one 14-step cycle: fine
    ({"snapshots": True}, None),
    ({"snapshot_ensemble": 3}, "train.snapshot_ensemble: needs train.snapshots: true"),
])
def test_bad_averaging_input_is_one_line_exit_2_and_no_run_dir(cli, tiny_config, tmp_path, capsys, train, message):
    cfg = tiny_config("bad", train={"epochs": 2, "eval_every": 5, **train})
    code = cli("train", cfg, "--run-dir", tmp_path / "run", "-q")
    if message is None:
        assert code == 0
        return
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_snapshots_with_a_run_too_short_for_one_cycle_is_refused(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config("short", policy={"name": "sgdr", "bounds": [0.001, 0.1], "stepsize": "3 epochs"},
                      train={"snapshots": True})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.snapshots: policy sgdr completes no cycle in 44 steps") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_compare_knows_the_averaged_metrics(cli, tiny_config, tmp_path, capsys):
    cfg = tiny_config("both", train={"ema": 0.9, "swa": {"start": 14}, "snapshots": True})
    assert cli("train", cfg, "--run-dir", tmp_path / "run", "-q") == 0
    capsys.readouterr()
    assert cli("compare", tmp_path / "run", "--format", "json", "--metric", "ensemble_val_acc") == 0
    report = json.loads(capsys.readouterr().out)
    values = report["runs"][0]["per_run"][0]["values"]
    done = summary(tmp_path / "run")
    assert values["ensemble_val_acc"] == done["ensemble_val_acc"]
    assert values["swa_val_acc"] == done["swa_val_acc"]
    assert values["final_ema_val_acc"] == done["final_ema_val_acc"]


def test_averaging_leaves_the_raw_training_as_it_was(tiny_config, tmp_path):
    """The averages watch the run: metrics.csv (the raw model's numbers) is the same bytes."""
    from clrctl.runs.training import start_training

    plain = load_config(tiny_config("plain"))
    extras = load_config(tiny_config("extras", train={"ema": 0.9, "swa": {"start": 14}, "snapshots": True}))
    a, _ = start_training(plain, run_dir=tmp_path / "plain")
    b, _ = start_training(extras, run_dir=tmp_path / "extras")
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert [r["val_acc"] for r in rows(a / "epochs.csv")] == [r["val_acc"] for r in rows(b / "epochs.csv")]


def test_a_run_killed_mid_epoch_with_every_average_on_resumes_to_the_uninterrupted_run(tiny_config, tmp_path):
    """What ``kill -9`` leaves — the directory as it is in the middle of epoch 2, last.pt from
    the end of epoch 1, rows after it, ``running`` — resumed with EMA, SWA and snapshots on."""
    from conftest import KilledAt

    from clrctl.runs.training import resume_training, start_training

    config = load_config(tiny_config("all", train={"ema": 0.95, "swa": {"start": 14}, "snapshots": True,
                                                   "snapshot_ensemble": 2, "checkpoint_every": 0}))
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    start_training(config, run_dir=ref, callbacks=(KilledAt(33, ref, killed),))  # (inside epoch 2, past the cycle end at 28)
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    resume_training(killed)
    assert json.loads((killed / "run.json").read_text())["resumed"][0]["step"] == SPE
    assert (killed / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert (killed / "snapshots.csv").read_bytes() == (ref / "snapshots.csv").read_bytes()
    drop = ("elapsed_s",)
    assert {k: v for k, v in summary(killed).items() if k not in drop} == \
        {k: v for k, v in summary(ref).items() if k not in drop}
    for name in ("ema.pt", "swa.pt", "snapshot-14.pt", "snapshot-28.pt", "snapshot-42.pt"):
        _same_weights(ref / "checkpoints" / name, killed / "checkpoints" / name)
