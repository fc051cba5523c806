import numpy as np
import torch
from ignite.engine import Engine, Events

from medgen.engine.fid_handler import FIDHandler
from medgen.metrics.features import DomainFeatures


def test_fid_handler_logs_every_n_epochs_and_keeps_the_best_checkpoint(tmp_path, rng):
    real = rng.random((16, 1, 32, 32)).astype(np.float32)
    noise_by_epoch = {2: 0.8, 4: 0.05, 6: 0.5}  # FID best at epoch 4
    model = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)

    def sample_fn(labels, seeds):
        sigma = noise_by_epoch[engine.state.epoch]
        model.weight.data.fill_(engine.state.epoch)  # so the saved state tells which epoch it came from
        x = torch.from_numpy(real) * 2 - 1
        return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)

    handler = FIDHandler(
        sample_fn,
        real,
        [0] * 16,
        list(range(16)),
        DomainFeatures(None, size=32),
        model=model,
        save_path=tmp_path / "best.pt",
        interval=2,
    )
    handler.attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.metrics.get("fid"))))
    engine.run([0], max_epochs=6)
    assert [e for e, _ in handler.history] == [2, 4, 6]
    assert seen[0][1] is None and seen[1][1] == handler.history[0][1] and seen[3][1] == handler.history[1][1]
    assert handler.best_epoch == 4
    assert torch.load(tmp_path / "best.pt")["weight"].flatten()[0].item() == 4.0
    assert not list(tmp_path.glob("*.tmp"))


def test_fid_history_curves_and_self_describing_best_weights(tmp_path, rng):
    import json

    from medgen.engine.handlers import LossHistory
    from medgen.networks.weights_meta import read_meta, sha256_of

    real = rng.random((16, 1, 32, 32)).astype(np.float32)
    model = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: {"loss": 1.0 / e.state.epoch})
    noise_by_epoch = {1: 0.6, 2: 0.1, 3: 0.4}

    def sample_fn(labels, seeds):
        x = torch.from_numpy(real) * 2 - 1
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return x + noise_by_epoch[engine.state.epoch] * noise

    LossHistory(tmp_path / "loss.jsonl").attach(engine)
    FIDHandler(sample_fn, real, [0] * 16, list(range(16)), DomainFeatures(None, size=32), model=model,
               save_path=tmp_path / "best_model.pt", interval=1, meta={"classes": ["a"], "image_size": 32},
               history_path=tmp_path / "fid.jsonl").attach(engine)
    engine.run([0], max_epochs=3)
    history = [json.loads(x) for x in (tmp_path / "fid.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert min(history, key=lambda h: h["fid"])["epoch"] == 2 and history[-1]["best"] == history[1]["fid"]
    meta = read_meta(tmp_path / "best_model.pt")  # the sidecar best_model.json describes these weights
    assert meta["classes"] == ["a"] and meta["selected_by"]["epoch"] == 2
    sidecar = json.loads((tmp_path / "best_model.json").read_text())
    assert sidecar["weights_sha256"] == sha256_of(tmp_path / "best_model.pt")
    from PIL import Image

    assert Image.open(tmp_path / "training_curves.png").size[0] >= 800  # loss and FID panels side by side
