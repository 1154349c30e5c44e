"""What a run keeps on disk: no two checkpoint files with the same weights at any point of a run (best_stage1.pt
is another name of best.pt's file while stage 1 is the best; last.pt refers to best.pt's weights when they are
the same), last.pt read back through that reference (also while best.pt is being replaced), and --keep best."""
import os

import pytest
import torch

import helpers
import rundir
import train
import utils

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helpers.run_env(tmp_path_factory, "ckpt")


def weights_on_disk(folder):
    """{(device, inode): state dict} of the checkpoint files that hold weights, and the names of each file."""
    files, names = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pt"):
            st = os.stat(folder / name)
            key = (st.st_dev, st.st_ino)
            names.setdefault(key, []).append(name)
            model = torch.load(folder / name, weights_only=False)["model"]
            if model is not None:
                files[key] = model
    return files, names


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_no_duplicates(folder):
    files, names = weights_on_disk(folder)
    keys = list(files)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not same(files[a], files[b]), (names[a], names[b])
    last = torch.load(folder / "last.pt", weights_only=False)
    if last["model"] is None:  # the reference resolves to best.pt's weights
        best = torch.load(folder / "best.pt", weights_only=True)
        assert last["weights_id"] == best["weights_id"]
        assert same(rundir.load_checkpoint(str(folder / "last.pt"))["model"], best["model"])
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary or previous files left
    return names


def test_no_two_files_with_the_same_weights(env, monkeypatch):
    """Checked after every last.pt write (each stage's start, every epoch) of a 2 + 2 epoch run, and at its end."""
    save = env["root"] / "run"
    seen = []
    save_last = rundir.RunDir.save_last

    def checked(run, model, *rest):
        save_last(run, model, *rest)
        seen.append(check_no_duplicates(save))

    monkeypatch.setattr(rundir.RunDir, "save_last", checked)
    args = helpers.train_args(env["data"], env["model"], save, env["cache"], stage1=2, stage2=2, lr=3e-3)
    assert train.cli(args) == 0
    assert len(seen) == 6  # at the start of each stage and at the end of each of its 2 epochs
    assert list(seen[0].values()) == [["last.pt"]]
    # stage 1 epoch 0 is always the best so far: best.pt and best_stage1.pt are one file (two names)
    assert sorted(seen[1].values()) == [["best.pt", "best_stage1.pt"], ["last.pt"]]
    # from stage 2 on they are different files
    assert ["best.pt"] in seen[-1].values() and ["best_stage1.pt"] in seen[-1].values()
    check_no_duplicates(save)


def test_last_pt_reads_previous_best_while_it_is_replaced(tmp_path):
    """Killed between writing the new best.pt and the new last.pt: last.pt's weights are in the kept previous
    best.pt. Without either file the error names them."""
    old = {"model": {"w": torch.arange(3.0)}, "args": {}, "weights_id": "a"}
    rundir.save_checkpoint(str(tmp_path / rundir.previous_name("best.pt")), old)
    rundir.save_checkpoint(str(tmp_path / "best.pt"), {"model": {"w": torch.zeros(3)}, "args": {}, "weights_id": "b"})
    rundir.save_checkpoint(str(tmp_path / "last.pt"), {"model": None, "model_file": "best.pt", "weights_id": "a",
                                                      "args": {}})
    assert torch.equal(rundir.load_checkpoint(str(tmp_path / "last.pt"))["model"]["w"], torch.arange(3.0))
    os.remove(tmp_path / rundir.previous_name("best.pt"))
    with pytest.raises(utils.UsageError, match="its weights are those of best.pt"):
        rundir.load_checkpoint(str(tmp_path / "last.pt"))


def test_keep_best(env):
    save = env["root"] / "keep_best"
    args = helpers.train_args(env["data"], env["model"], save, env["cache"], "--keep", "best", stage1=1, stage2=1)
    assert train.cli(args) == 0
    assert sorted(n for n in os.listdir(save) if n.endswith(".pt") or n.startswith(".")) == ["best.pt"]
    assert (save / "result.json").is_file() and (save / "eval_scores.json").is_file()
    assert torch.load(save / "best.pt", weights_only=True)["stage"] == 2
