import numpy as np
import pytest
import torch

from medgen.metrics.quality_gate import QualityGate, generate_until_pass


def test_gate_passes_most_real_images_and_rejects_outliers(rng):
    gate = QualityGate(k=5, percentile=95).fit(rng.normal(size=(400, 4)), rng.normal(size=(200, 4)))
    fresh = gate.passes(rng.normal(size=(500, 4))).mean()
    assert 0.85 < fresh <= 1.0
    assert not gate.passes(rng.normal(size=(20, 4)) + 10).any()
    s = gate.score(np.zeros((1, 4)))
    assert s.shape == (1,) and s[0] < gate.threshold


def test_gate_without_held_out_uses_leave_one_out(rng):
    gate = QualityGate(k=3, percentile=90).fit(rng.normal(size=(200, 3)))
    assert 0.8 < gate.passes(rng.normal(size=(300, 3))).mean() < 1.0


def test_gate_save_and_load(tmp_path, rng):
    gate = QualityGate().fit(rng.normal(size=(50, 3)))
    again = QualityGate.load(gate.save(tmp_path / "gate.npz"))
    x = rng.normal(size=(10, 3))
    assert again.threshold == gate.threshold and np.allclose(again.score(x), gate.score(x))


def test_unfitted_gate_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        QualityGate().score(np.zeros((1, 2)))


def test_generate_until_pass_retries_rejected_slots(rng):
    """Features = mean grey - 0.5; even seeds give mid-grey images (pass), odd seeds white ones (rejected)."""
    gate = QualityGate(k=3, percentile=95).fit(rng.normal(0, 0.05, size=(100, 1)))

    def generate(labels, seeds):  # N x 1 x 4 x 4 in [-1, 1]
        return torch.tensor([0.0 if s % 2 == 0 else 1.0 for s in seeds]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)

    def features(x):
        return x.reshape(len(x), -1).mean(1, keepdims=True) - 0.5

    out = generate_until_pass(generate, [0, 1, 0, 1], gate, features)
    assert out["images"].shape == (4, 1, 4, 4) and out["seeds"] == [0, 4, 2, 6]
    assert out["rejection_rate"] == pytest.approx(3 / 7)  # seeds 0-3: 1, 3 fail; 4, 5: 5 fails; 6 passes


def test_generate_until_pass_gives_up_clearly(rng):
    gate = QualityGate(k=3).fit(rng.normal(0, 0.05, size=(50, 1)))
    with pytest.raises(RuntimeError, match="still fail after 2 rounds"):
        generate_until_pass(
            lambda lab, s: torch.ones(len(s), 1, 2, 2), [0], gate, lambda x: x.reshape(len(x), -1)[:, :1], max_rounds=2
        )
