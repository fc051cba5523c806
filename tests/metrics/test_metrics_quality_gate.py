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


def test_quality_filtered_generate_with_a_pipeline(tmp_path, rng):
    """The `medgen sample --quality-filter` entry point: a pipeline-like object, a saved gate and domain weights."""
    from medgen.metrics.classifier import build_classifier, save_classifier
    from medgen.metrics.commands import quality_filtered_generate
    from medgen.metrics.features import DomainFeatures

    torch.manual_seed(0)
    weights = save_classifier(build_classifier(2), tmp_path / "domain.pt", ["a", "b"], 32)
    real = rng.random((40, 1, 32, 32)).astype(np.float32) * 0.2 + 0.4
    QualityGate(k=3, percentile=99).fit(DomainFeatures(weights)(real)).save(tmp_path / "gate.npz")

    class Pipeline:
        calls = []

        def generate(self, labels, seeds, num_inference_steps=50, guidance_scale=1.0):
            self.calls.append((list(seeds), num_inference_steps))
            g = torch.Generator().manual_seed(0)
            return torch.rand(len(seeds), 1, 32, 32, generator=g) * 0.4 - 0.2  # like the real images, in [-1, 1]

    out = quality_filtered_generate(
        Pipeline(), [0, 1, 1], str(tmp_path / "gate.npz"), domain_weights=str(weights), num_inference_steps=7
    )
    assert out["images"].shape == (3, 1, 32, 32) and len(out["scores"]) == 3
    assert Pipeline.calls[0] == ([0, 1, 2], 7) and 0 <= out["rejection_rate"] < 1
