import pytest
import torch

from medgen.networks import ConditionalDiffusionUNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ConditionalDiffusionUNet(
        num_classes=2, channels=(32, 32, 32, 32), attention_levels=(False, False, False, True), num_res_blocks=1
    ).eval()
    # a freshly built UNet zero-initialises its output conv; give it weights so outputs depend on the input
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def test_class_labels_change_the_output_from_the_same_noise(net):
    x = torch.randn(1, 1, 32, 32).repeat(3, 1, 1, 1)
    t = torch.tensor([500, 500, 500])
    with torch.no_grad():
        out = net(x, t, class_labels=torch.tensor([0, 1, 2]))
    assert out.shape == (3, 1, 32, 32)
    assert not torch.allclose(out[0], out[1], atol=1e-5)  # class 0 vs class 1
    assert not torch.allclose(out[0], out[2], atol=1e-5)  # class 0 vs the null class


def test_missing_labels_mean_the_null_class(net):
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t, class_labels=torch.full((2,), net.null_class)))
    assert net.null_class == 2 and net.class_embedding.num_embeddings == 3


def test_state_dict_is_a_plain_monai_unet(net):
    from monai.networks.nets import DiffusionModelUNet

    plain = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(32, 32, 32, 32),
        attention_levels=(False, False, False, True),
        num_res_blocks=1,
        num_head_channels=32,
        num_class_embeds=3,
    )
    plain.load_state_dict(net.state_dict())


def test_rejects_zero_classes():
    with pytest.raises(ValueError, match="num_classes"):
        ConditionalDiffusionUNet(num_classes=0)
