"""utils.set_cpu_threads: --threads N sets N; --threads 0 takes the cores that no other runnable task holds."""
import torch

import utils


def test_threads_given_are_set_and_zero_leaves_out_the_busy_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert utils.set_cpu_threads(3) == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        torch.set_num_threads(4)  # torch's default on 4 cores
        for busy, expected in ((0, 4), (1, 3), (3, 1), (7, 1)):
            monkeypatch.setattr(utils, "_others_running", lambda busy=busy: busy)
            torch.set_num_threads(4)
            assert utils.set_cpu_threads(0) == expected and torch.get_num_threads() == expected
        torch.set_num_threads(2)  # OMP_NUM_THREADS=2, say: never more than torch's own default
        monkeypatch.setattr(utils, "_others_running", lambda: 0)
        assert utils.set_cpu_threads(0) == 2
    finally:
        torch.set_num_threads(before)


def test_others_running_reads_the_runnable_count_less_this_process(monkeypatch, tmp_path):
    import builtins
    fake = tmp_path / "loadavg"
    fake.write_text("0.52 0.97 1.11 3/113 1182\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(fake if path == "/proc/loadavg" else path,
                                                                          *a, **k))
    monkeypatch.setattr(utils.time, "sleep", lambda s: None)
    assert utils._others_running() == 2
    fake.write_text("garbled\n")
    assert utils._others_running() == 0
