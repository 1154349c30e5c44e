"""--wandb: one W&B step counter across both stages, the run named after --save_path, --resume continuing the same
W&B run (its id kept in args.json / last.pt), and the final dev/test scores logged. A recording stand-in for
wandb.init checks what is logged; WANDB_MODE=offline runs the real client."""
import json
import os
import signal

import pytest

import helpers
import train

pytestmark = pytest.mark.filterwarnings("ignore")
wandb = pytest.importorskip("wandb")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helpers.run_env(tmp_path_factory, "wandb")


class Recorder:
    """What train.py gives wandb: init arguments, logged rows with their steps, summary, finish."""

    def __init__(self):
        self.inits, self.rows, self.summary, self.finished, self.config = [], [], {}, [], {}

    def init(self, **kwargs):
        self.inits.append(kwargs)
        recorder = self

        class Config:
            def update(self, values, allow_val_change=False):
                recorder.config.update(values)

        class Run:
            config = Config()
            summary = recorder.summary

            def log(self, data, step=None):
                recorder.rows.append((step, dict(data)))

            def finish(self, exit_code=0):
                recorder.finished.append(exit_code)

        return Run()


def flags(env, save, *extra):
    return helpers.train_args(env["data"], env["model"], save, env["cache"], "--wandb", "--log_every", "1", *extra,
                              stage1=2, stage2=2, lr=3e-3)


def test_steps_name_and_final_scores(env, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(wandb, "init", rec.init)
    save = env["root"] / "run"
    assert train.cli(flags(env, save)) == 0
    saved = json.loads((save / "args.json").read_text())
    assert rec.inits == [{"project": "docre-ii", "name": os.path.normpath(str(save)), "id": saved["wandb_run_id"],
                          "resume": "allow"}]
    assert rec.config["seed"] == 7 and rec.config["wandb_run_id"] == saved["wandb_run_id"]
    steps = [s for s, _ in rec.rows if s is not None]
    assert steps == sorted(steps)  # W&B drops a row whose step is lower than the last
    # 4 documents, batch 2: 2 steps an epoch; stage 2 continues at 5..8 after stage 1's 1..4
    train_steps = [s for s, row in rec.rows if "train/loss" in row]
    assert train_steps == [1, 2, 3, 4, 5, 6, 7, 8]
    dev = [(s, row["stage"], row["epoch"]) for s, row in rec.rows if "dev/f1" in row]
    assert dev == [(2, 1, 0), (4, 1, 1), (6, 2, 0), (8, 2, 1)]
    assert all("dev_base/f1" in row for s, row in rec.rows if row.get("stage") == 2 and "dev/f1" in row)
    final = json.loads((save / "eval_scores.json").read_text())
    assert rec.summary["final/dev/f1"] == final["dev"]["f1"] and rec.summary["final/test/f1"] == final["test"]["f1"]
    assert rec.rows[-1][1] == rec.summary and rec.finished == [0]


def test_resume_continues_the_same_run(env, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(wandb, "init", rec.init)
    save = env["root"] / "resumed"
    end_of_epoch = train.evaluate_epoch

    def stop_after_stage1(run, model, stage, pos, *rest):
        if stage == 1 and pos.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train.py: stop at the stage boundary
        return end_of_epoch(run, model, stage, pos, *rest)

    monkeypatch.setattr(train, "evaluate_epoch", stop_after_stage1)
    assert train.cli(flags(env, save)) == 128 + signal.SIGTERM
    monkeypatch.setattr(train, "evaluate_epoch", end_of_epoch)
    assert rec.finished == [128 + signal.SIGTERM]
    first_id = rec.inits[0]["id"]
    assert train.cli(["--resume", str(save)]) == 0
    assert [i["id"] for i in rec.inits] == [first_id, first_id] and rec.inits[1]["resume"] == "allow"
    train_steps = [s for s, row in rec.rows if "train/loss" in row]
    assert train_steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((save / "args.json").read_text())["wandb_run_id"] == first_id


def test_offline_mode(env, tmp_path, monkeypatch):
    """The real client, offline: init with the run's id and name, both stages' rows and the final scores."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # a W&B session started by an earlier test would ignore the variables above
    save = tmp_path / "run"
    assert train.cli(helpers.train_args(env["data"], env["model"], save, env["cache"], "--wandb", stage1=1,
                                        stage2=1)) == 0
    run_id = json.loads((save / "args.json").read_text())["wandb_run_id"]
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith("-" + run_id)
