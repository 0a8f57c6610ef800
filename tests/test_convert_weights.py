"""`unlearn convert-weights`: a raw state dict (torchvision's, timm's, a training script's) becomes the checkpoint
`run`, `forget` and `eval` take (issue 34: only the bench's `original.weights` could do it). The weights files are
made here from small torchvision and timm models, as their release files are: a plain state dict saved with
torch.save, or a .safetensors file."""

import pytest
import torch

from jobs import convert_weights
from jobs.common import run_main
from pipeline.data.shards import read_meta
from pipeline.models import load_checkpoint
from pipeline.runs.common import check_model_fits_data

IMAGENET = ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]


def convert(argv, capsys) -> tuple[int, str, str]:
    status = run_main(convert_weights.main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_same_weights(checkpoint: str, reference: torch.nn.Module) -> None:
    """The checkpoint reads back with weights_only=True, and its backbone is the reference, tensor for tensor."""
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) >= {"state_dict", "spec", "extra"}
    model, _, _ = load_checkpoint(checkpoint)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().backbone(images), reference.eval()(images), atol=1e-6)


def test_a_torchvision_state_dict_becomes_a_checkpoint(tmp_path, capsys):
    import torchvision

    reference = torchvision.models.resnet18(weights=None, num_classes=7)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")  # what torchvision's release file holds
    out = tmp_path / "original.pt"
    status, printed, _ = convert(["--weights", str(tmp_path / "resnet18.pth"), "--model", "torchvision:resnet18",
                                  "--out", str(out), "--num-classes", "7", "--image-size", "32", *IMAGENET], capsys)
    assert status == 0
    assert "7 classes, 3 channel(s), 32 px, mean [0.485, 0.456, 0.406]" in printed and "sha256" in printed
    assert_same_weights(str(out), reference)
    _, spec, extra = load_checkpoint(str(out))
    assert (spec.name, spec.num_classes, spec.image_size, spec.std) == ("torchvision:resnet18", 7, 32,
                                                                       [0.229, 0.224, 0.225])
    assert extra["weights"] == str(tmp_path / "resnet18.pth")


def test_timm_safetensors_and_a_training_scripts_wrapped_ddp_file(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))  # timm's hub files are these
    wrapped = {"epoch": 3, "arch": "resnet10t", "optimizer": {"lr": 0.1},
               "state_dict": {f"module.{key}": value for key, value in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint-3.pth.tar")
    for name in ("model.safetensors", "checkpoint-3.pth.tar"):
        out = tmp_path / f"{name}.pt"
        status, _, err = convert(["--weights", str(tmp_path / name), "--model", "resnet10t", "--out", str(out),
                                  "--num-classes", "4", "--image-size", "224", *IMAGENET], capsys)
        assert status == 0, err
        assert_same_weights(str(out), reference)


def test_with_data_the_checkpoint_fits_the_dataset_as_run_checks_it(digits_hard_uri, tmp_path, capsys):
    from pipeline.models import ModelSpec, build_model

    meta = read_meta(digits_hard_uri)
    trained = build_model(ModelSpec("cnn", meta.num_classes, meta.channels, meta.height)).backbone
    torch.save(trained.state_dict(), tmp_path / "cnn.pth")
    out = tmp_path / "original.pt"
    status, printed, _ = convert(["--weights", str(tmp_path / "cnn.pth"), "--model", "cnn", "--out", str(out),
                                  "--data", digits_hard_uri], capsys)
    assert status == 0
    _, spec, _ = load_checkpoint(str(out))
    check_model_fits_data(spec, meta, str(out), digits_hard_uri)  # what `unlearn run` refuses a checkpoint by
    assert (spec.num_classes, spec.channels, spec.image_size) == (meta.num_classes, meta.channels, meta.height)
    assert spec.mean == list(meta.mean or [0.5])
    # Weights of another class count do not fit that data: named, with what must match, exit 2, nothing written.
    other = build_model(ModelSpec("cnn", 3, meta.channels, meta.height)).backbone
    torch.save(other.state_dict(), tmp_path / "three.pth")
    status, _, err = convert(["--weights", str(tmp_path / "three.pth"), "--model", "cnn", "--out",
                              str(tmp_path / "three.pt"), "--data", digits_hard_uri], capsys)
    assert status == 2 and "do not fit this model" in err and "the classes, channels and input size" in err
    assert not (tmp_path / "three.pt").exists()


@pytest.mark.parametrize("extra, words", [
    ([], "without --data, give --num-classes, --image-size, --mean, --std"),
    (["--num-classes", "1", "--image-size", "32", *IMAGENET], "--num-classes must be at least 2"),
    (["--num-classes", "5", "--image-size", "32", "--mean", "0.5", "--std", "0.2", "0.3"], "--mean and --std go"),
    (["--num-classes", "5", "--image-size", "32", "--mean", "0.5", "--std", "0"], "--std values must be above 0"),
])
def test_flag_mistakes_are_named_before_any_file(tmp_path, capsys, extra, words):
    status, _, err = convert(["--weights", str(tmp_path / "none.pth"), "--model", "cnn",
                              "--out", str(tmp_path / "o.pt"), *extra], capsys)
    assert status == 2 and words in err


def test_missing_weights_an_existing_out_and_a_file_that_is_not_weights(tmp_path, capsys):
    flags = ["--model", "cnn", "--num-classes", "3", "--image-size", "8", "--mean", "0.5", "--std", "0.25"]
    status, _, err = convert(["--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o.pt"), *flags],
                             capsys)
    assert status == 2 and "does not exist" in err
    (tmp_path / "o.pt").write_bytes(b"kept")
    (tmp_path / "w.pth").write_bytes(b"not weights")
    status, _, err = convert(["--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "o.pt"), *flags], capsys)
    assert status == 2 and "exists" in err and "--overwrite" in err
    assert (tmp_path / "o.pt").read_bytes() == b"kept"
    status, _, err = convert(["--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "o.pt"), "--overwrite",
                              *flags], capsys)
    assert status == 2 and "not a PyTorch checkpoint" in err
    assert (tmp_path / "o.pt").read_bytes() == b"kept"
