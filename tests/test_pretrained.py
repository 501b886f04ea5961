"""Pretrained teachers from torchvision's weights (mcmi.models.pretrained), without a download: state
dicts saved here in torchvision's format, fetched through torch.hub from a file:// address with its
hash check, refused when the file or its hash is wrong, loaded strictly into the zoo's models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mcmi.models import create_model, load_repdistiller_checkpoint
from mcmi.models import pretrained
from mcmi.models.pretrained import fetch, resolve_torchvision, verify_file
from mcmi.models.zoo import IMAGENET_MODEL_NAMES


@pytest.mark.parametrize("name", IMAGENET_MODEL_NAMES)
def test_torchvision_state_dicts_have_the_zoo_models_keys_and_shapes(name):
    import torchvision

    theirs = getattr(torchvision.models, name)().state_dict()
    ours = create_model(name, 1000).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_the_papers_teachers_are_torchvisions_imagenet1k_v1():
    """Table 2's MLL teachers: 73.31 / 91.42 (ResNet34) and 76.13 / 92.86 (ResNet50)."""
    r34 = resolve_torchvision("resnet34", "torchvision:IMAGENET1K_V1")
    r50 = resolve_torchvision("resnet50", "torchvision:IMAGENET1K_V1")
    assert (round(r34.metrics["acc@1"], 2), round(r34.metrics["acc@5"], 2)) == (73.31, 91.42)
    assert (round(r50.metrics["acc@1"], 2), round(r50.metrics["acc@5"], 2)) == (76.13, 92.86)
    assert r34.hash_prefix == "b627a593" and r34.file.name == "resnet34-b627a593.pth" and r34.num_classes == 1000
    assert r34.key == "ResNet34_Weights.IMAGENET1K_V1"
    assert resolve_torchvision("resnet50", "torchvision:DEFAULT").key == "ResNet50_Weights.IMAGENET1K_V2"


@pytest.mark.parametrize("model, source, message", [
    ("resnet34", "torchvision:IMAGENET1K_V9", r"no weights 'IMAGENET1K_V9'; it has \['IMAGENET1K_V1', 'DEFAULT'\]"),
    ("resnet56", "torchvision:IMAGENET1K_V1", "only for the zoo's torchvision models"),
])
def test_unknown_weights_are_refused_naming_them(model, source, message):
    with pytest.raises(ValueError, match=message):
        resolve_torchvision(model, source)


def test_the_config_names_the_key_of_bad_torchvision_weights():
    import yaml

    from mcmi.pipeline import WorkflowConfig
    from mcmi.pipeline.config import ConfigError

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    config["teachers"]["pretrained"]["imagenet"]["resnet50"] = "torchvision:IMAGENET1K_V3"
    with pytest.raises(ConfigError, match=r"teachers\.pretrained\.imagenet\.resnet50: resnet50: torchvision has no "
                                          r"weights 'IMAGENET1K_V3'"):
        WorkflowConfig(config, repo)


def _torchvision_file(folder: Path, model: str = "resnet18") -> Path:
    """A state dict in torchvision's format (its own model's), named as torchvision names its files:
    <model>-<first 8 hex digits of its SHA-256>.pth."""
    import torchvision

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / "staged.pth"
    torch.save(getattr(torchvision.models, model)().state_dict(), staged)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    return staged.rename(folder / f"{model}-{digest[:8]}.pth")


@pytest.fixture
def local_weights(tmp_path, monkeypatch):
    """torch's hub cache under tmp_path; resnet18's IMAGENET1K_V1 'download' address a local file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    source = _torchvision_file(tmp_path / "server")
    monkeypatch.setattr(pretrained, "_url", lambda weights: source.as_uri())
    return resolve_torchvision("resnet18", "torchvision:IMAGENET1K_V1"), source


def test_fetch_downloads_through_torch_hub_with_its_hash_check_and_loads_strictly(local_weights):
    weights, source = local_weights
    assert not weights.file.exists() and str(weights.file).startswith(str(Path(torch.hub.get_dir())))
    path = fetch(weights)
    assert path == weights.file and path.read_bytes() == source.read_bytes()
    model = load_repdistiller_checkpoint(create_model("resnet18", 1000), path)      # strict, weights only
    assert torch.equal(model.fc.weight, torch.load(source, weights_only=True)["fc.weight"])
    assert fetch(weights) == path                      # already there: checked, not downloaded again
    record, log = path.parent.parent / "record.json", path.parent.parent / "fetch.log"
    pretrained.fetch_and_record(weights, record, log)  # what the workflow's local rule pretrained_weights runs
    written = json.loads(record.read_text())
    assert written["file"] == str(path) and written["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert written["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and "SHA-256 begins with" in log.read_text()


def test_a_wrong_file_in_the_cache_or_at_the_address_is_refused(local_weights, tmp_path, monkeypatch):
    weights, source = local_weights
    weights.file.parent.mkdir(parents=True)
    weights.file.write_bytes(source.read_bytes()[:-10] + b"0123456789")      # damaged in the cache
    with pytest.raises(ValueError, match=rf"{weights.file}: SHA-256 .* does not begin with {weights.hash_prefix}"):
        fetch(weights)
    weights.file.unlink()
    impostor = tmp_path / "server2" / source.name          # the address serves another file
    impostor.parent.mkdir()
    impostor.write_bytes(source.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(pretrained, "_url", lambda w: impostor.as_uri())
    wrong = resolve_torchvision("resnet18", "torchvision:IMAGENET1K_V1")
    with pytest.raises(ValueError, match="invalid hash value"):                # torch.hub's own check
        fetch(wrong)
    assert not wrong.file.exists()


def test_the_import_stage_refuses_a_wrong_weights_file_before_any_work(local_weights, tmp_path):
    from mcmi.pipeline.specs import ImportSpec
    from mcmi.stages import run_stage

    weights, source = local_weights
    wrong = tmp_path / "resnet18-00000000.pth"
    wrong.write_bytes(source.read_bytes())
    wrong.write_bytes(wrong.read_bytes() + b"x")
    spec = ImportSpec(dataset={"kind": "imagefolder", "root": str(tmp_path / "no_such_dataset"), "image_size": 32},
                      seed=0, out_metrics=str(tmp_path / "out/metrics.json"), device="cpu", model="resnet18",
                      checkpoint=str(wrong), out_model=str(tmp_path / "out/model.pt"),
                      source="torchvision:IMAGENET1K_V1")
    with pytest.raises(ValueError, match=rf"{wrong}: SHA-256 .* does not begin with"):   # not the dataset's error
        run_stage(spec)
    assert not (tmp_path / "out" / "model.pt").exists()


@pytest.mark.slow
def test_the_import_stage_evaluates_torchvision_weights_and_digests_the_file_it_loaded(local_weights, tmp_path):
    """On a 1000-class image folder (one 32-pixel image per class and split): torchvision's file is
    checked, loaded strictly, evaluated, saved in RepDistiller's layout; the job's content identity
    digests that file."""
    from PIL import Image

    from mcmi.pipeline.specs import ImportSpec
    from mcmi.stages import run_stage

    weights, _ = local_weights
    fetch(weights)
    root = tmp_path / "imagenet_like"
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(1000):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator).numpy()
            Image.fromarray(pixels).save(folder / "0.png")
    spec = ImportSpec(dataset={"kind": "imagefolder", "root": str(root), "image_size": 32, "in_memory": False},
                      seed=0, out_metrics=str(tmp_path / "out/metrics.json"), device="cpu", model="resnet18",
                      checkpoint=str(weights.file), out_model=str(tmp_path / "out/model.pt"),
                      source="torchvision:IMAGENET1K_V1")
    run_stage(spec)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["final"]["source"] == str(weights.file)
    assert metrics["provenance"]["identity"]["inputs"]["checkpoint"] == hashlib.sha256(
        weights.file.read_bytes()).hexdigest()
    saved = torch.load(tmp_path / "out/model.pt", weights_only=True)["model"]
    assert torch.equal(saved["fc.weight"], torch.load(weights.file, weights_only=True)["fc.weight"])
