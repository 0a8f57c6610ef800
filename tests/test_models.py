"""Model builders by name, weights files (never downloads), and checkpoints loaded with weights_only."""

import pytest
import torch

from pipeline.errors import ConfigError, DataError
from pipeline.models import ModelSpec, build_model, load_checkpoint, load_weights, save_checkpoint


@pytest.mark.parametrize("name, channels, size", [
    ("cnn", 1, 8), ("cnn", 1, 32), ("resnet18", 3, 32), ("vit_tiny_patch16_224", 3, 32), ("resnet50", 3, 32),
])
def test_builders_give_logits_for_uint8_images(name, channels, size):
    model = build_model(ModelSpec(name, num_classes=7, channels=channels, image_size=size)).eval()
    images = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)
    with torch.no_grad():
        assert model(images).shape == (2, 7)


def test_resnet18_small_image_stem_keeps_resolution():
    model = build_model(ModelSpec("resnet18", num_classes=10, channels=3, image_size=32))
    assert model.backbone.conv1.kernel_size == (3, 3) and isinstance(model.backbone.maxpool, torch.nn.Identity)


def test_grey_images_feed_an_rgb_torchvision_backbone():
    model = build_model(ModelSpec("resnet50", num_classes=3, channels=1, image_size=32)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, dtype=torch.uint8)).shape == (1, 3)


def test_torchvision_weights_file_loads_into_the_backbone(tmp_path):
    import torchvision

    reference = torchvision.models.vit_b_16(weights=None, num_classes=5, image_size=32)
    torch.save(reference.state_dict(), tmp_path / "vit_b_16.pth")  # what a user's official weights file holds
    model = build_model(ModelSpec("vit_b_16", num_classes=5, channels=3, image_size=32))
    load_weights(model, str(tmp_path / "vit_b_16.pth"))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    torch.save(build_model(ModelSpec("cnn", 3, 1, 8)).backbone.state_dict(), tmp_path / "w.pth")
    with pytest.raises(DataError, match="do not fit this model"):
        load_weights(build_model(ModelSpec("cnn", 10, 1, 8)), str(tmp_path / "w.pth"))


def test_checkpoint_round_trip_and_pickles_are_refused(tmp_path):
    spec = ModelSpec("cnn", 4, 1, 8)
    model = build_model(spec)
    save_checkpoint(model, spec, str(tmp_path / "model.pt"))
    loaded, loaded_spec, _ = load_checkpoint(str(tmp_path / "model.pt"))
    assert loaded_spec == spec
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"spec": {}, "state_dict": {}, "payload": object()}, tmp_path / "evil.pt")  # arbitrary pickle
    with pytest.raises(DataError, match="cannot load weights"):
        load_checkpoint(str(tmp_path / "evil.pt"))


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelSpec("no_such_net", 3, 3, 32))
