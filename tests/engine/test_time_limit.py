"""TimeLimit: training stops cleanly after the wall-clock limit, and the end-of-training handlers still run."""

import time

import pytest
from ignite.engine import Engine, Events

from medgen.engine import TimeLimit


def _engine() -> Engine:
    return Engine(lambda engine, batch: time.sleep(0.05))


def test_stops_after_limit_and_completes():
    engine = _engine()
    TimeLimit(1).attach(engine)
    completed = []
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    start = time.perf_counter()
    engine.run(range(10), max_epochs=1000)
    elapsed = time.perf_counter() - start
    assert completed, "COMPLETED must fire so the final checkpoint and model.pt are written"
    assert 10 <= completed[0] < 10 * 1000
    assert 1.0 <= elapsed < 3.0


def test_clock_starts_with_the_run_not_the_handler():
    engine = _engine()
    handler = TimeLimit(1)
    time.sleep(1.2)  # config parsing, caching the data set...
    handler.attach(engine)
    state = engine.run(range(5), max_epochs=2)
    assert state.iteration == 10


@pytest.mark.parametrize("limit", [None, 0])
def test_disabled(limit):
    engine = _engine()
    TimeLimit(limit).attach(engine)
    assert engine.run(range(3), max_epochs=2).iteration == 6


def test_negative_is_an_error():
    with pytest.raises(ValueError, match="time limit"):
        TimeLimit(-5)


def test_resume_takes_the_newest_checkpoint_including_the_final_one(tmp_path):
    import os

    import torch

    from medgen.engine import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    # epoch checkpoints every 10 epochs (2 iterations each); the final one written by a time limit in epoch 21
    for i, (name, iteration) in enumerate([("checkpoint_epoch=10.pt", 20), ("checkpoint_epoch=20.pt", 40),
                                           ("checkpoint_final.pt", 41)]):
        torch.save({"trainer": {"epoch_length": 2, "max_epochs": 100, "iteration": iteration}}, tmp_path / name)
        os.utime(tmp_path / name, ns=(10**18 - i * 10**9, 10**18 - i * 10**9))  # file times say nothing
    (tmp_path / "notes.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "checkpoint_final.pt"  # a run stopped by its time limit
    later = {"trainer": {"epoch_length": 2, "max_epochs": 100, "iteration": 60}}
    torch.save(later, tmp_path / "checkpoint_epoch=30.pt")
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=30.pt"
