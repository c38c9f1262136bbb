"""Data-parallel training: real gloo process groups on this machine, real training runs."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codec import data_parallel
from codec.errors import CodecError
from codec.model import ModelConfig, NestedLatentCodec
from codec.train import TrainConfig, train
from tests.codec.test_train import TINY, config
from tests.conftest import PROJECT_ROOT


def _one_step_in_each_process(out_dir: str):
    """Same initial weights, different crops per process: after one averaged step the weights agree."""
    torch.manual_seed(0)
    net = NestedLatentCodec(ModelConfig(**TINY))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    r = data_parallel.rank()
    torch.manual_seed(100 + r)
    x, lam = torch.rand(2, 3, 64, 64), torch.tensor([100.0, 2000.0])
    out = net(x, lam)
    (out["bpp"].mean() + (lam * (out["x_hat"] - x).square().mean(dim=(1, 2, 3))).mean()).backward()
    own = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    data_parallel.average_gradients(net.parameters())
    averaged = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    opt.step()
    weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    owns, averages, all_weights = (data_parallel.gather(t) for t in (own, averaged, weights))
    stop = data_parallel.any_process(r == 1)
    if r == 0:
        result = {"world": data_parallel.world(), "stop": stop,
                  "own_differ": not torch.equal(owns[0], owns[1]),
                  "mean_ok": bool(torch.allclose(averages[0], (owns[0] + owns[1]) / 2, atol=1e-6)),
                  "same_average": torch.equal(averages[0], averages[1]),
                  "same_weights": torch.equal(all_weights[0], all_weights[1])}
        (Path(out_dir) / "result.json").write_text(json.dumps(result))


def _fails():
    raise CodecError("the weights do not fit the configured model: x")


def _wait_in_each_process(out_dir: str):
    """Say which process this is, then wait as a long training run would."""
    (Path(out_dir) / f"{os.getpid()}.pid").write_text(str(data_parallel.rank()))
    time.sleep(300)


def _print_and_log(log_path: str):
    """Leave a line on a piped stdout and one in a log file, neither flushed by hand."""
    log = logging.getLogger("codec.test_leave")
    if not log.handlers:
        log.addHandler(logging.FileHandler(log_path))   # appended to by both processes
        log.setLevel(logging.INFO)
    log.info("logged by %d", data_parallel.rank())
    print(f"printed by {data_parallel.rank()}")


def _launcher(helper: str, arg, then: str = "pass") -> list[str]:
    """A separate Python that launches this module's `helper`(arg) in 2 processes, then runs `then`."""
    return [sys.executable, "-c", "import sys; from codec import data_parallel; "
            f"from tests.codec.test_data_parallel import {helper} as f; "
            f"data_parallel.launch(f, 2, sys.argv[1]); {then}", str(arg)]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init; its /proc entry may linger a moment)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_workers_stop_when_the_launcher_is_killed(tmp_path):
    # Started as `python -m codec train ... &` starts it from a script: SIGINT ignored, so the workers also
    # ignore the SIGINT torch's spawn asks the kernel to send them when their parent dies.
    launcher = subprocess.Popen(_launcher("_wait_in_each_process", tmp_path), cwd=PROJECT_ROOT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("*.pid"))) == 2, 120), "the workers never started"
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert all(_running(pid) for pid in workers)
        launcher.send_signal(signal.SIGKILL)   # what an OOM kill or `kill -9` of `codec train` does
        launcher.wait(timeout=30)
        assert _wait_for(lambda: not any(_running(pid) for pid in workers), 30), "orphaned workers kept running"
    finally:
        launcher.kill()
        for pid in tmp_path.glob("*.pid"):
            try:
                os.kill(int(pid.stem), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_processes_leave_with_every_line_written(tmp_path):
    # The workers end with os._exit (gloo's teardown aborted finished runs): what they printed to a pipe
    # or logged must still come out, and the launcher must see both exit cleanly.
    log = tmp_path / "run.log"
    done = subprocess.run(
        _launcher("_print_and_log", log, then="print('launcher done')"),
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})   # a pipe buffers by block
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(done.stdout.split("\n")[:-1]) == ["launcher done", "printed by 0", "printed by 1"]
    assert sorted(log.read_text().splitlines()) == ["logged by 0", "logged by 1"]


def test_gradients_are_averaged_and_weights_stay_identical(tmp_path):
    data_parallel.launch(_one_step_in_each_process, 2, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"world": 2, "stop": True, "own_differ": True, "mean_ok": True, "same_average": True,
                      "same_weights": True}


def test_a_failing_process_is_one_clear_error():
    with pytest.raises(CodecError, match="a training process failed: .*the weights do not fit the configured model"):
        data_parallel.launch(_fails, 2)


def test_two_processes_train_checkpoint_every_stream_and_resume(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=3, processes=2, val_coded=False)))
    run = tmp_path / "run"
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 3 and len(state["process_states"]) == 1
    second = state["process_states"][0]
    assert second["sampler_rng"] != state["sampler_rng"]   # the second process drew other crops
    assert not torch.equal(second["torch_rng"], state["torch_rng"])
    log = (run / "train.log").read_text()
    assert "in each of 2 processes" in log and "val step 3" in log
    train(TrainConfig(**config(tmp_path, folders, steps=6, processes=2, val_coded=False)))
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 6 and "resumed from" in (run / "train.log").read_text()
    moved = [k for k in state["model"] if not torch.equal(state["model"][k], resumed["model"][k])]
    assert moved   # it trained on


def test_a_single_process_checkpoint_resumes_in_two(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=3, val_coded=False)))
    train(TrainConfig(**config(tmp_path, folders, steps=6, processes=2, val_coded=False)))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 6 and len(state["process_states"]) == 1
    assert np.isfinite([v.float().abs().max().item() for v in state["model"].values()]).all()
