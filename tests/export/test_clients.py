"""`bigseer export` output loads as-is in its users' own clients (transformers Auto* / pipeline, timm
local-dir) and gives bigseer's features; no client may touch the network."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bigseer.config import PretrainConfig
from bigseer.data.multicrop import IMAGENET_MEAN, IMAGENET_STD
from bigseer.errors import ConfigError
from bigseer.export import export_checkpoint, load_pretrained
from bigseer.export.configs import input_spec, timm_config
from bigseer.export.validate import expected_trunk
from bigseer.models import PRESETS, TIMM_NAMES
from tests.export.builders import TinySwAV, randomize, write_torch_checkpoint
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

PRESET = "regnety_200mf"  # = timm's regnety_002
CROPS = "2x96+4x48"  # trained at 96 px: the clients must say 96, not their 224 default


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 and no sockets: a client that tries to download fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _run(root: Path, preset: str, crops: str | None) -> tuple[TinySwAV, Path]:
    """A torch-format training checkpoint whose meta.json records a real run config."""
    model = randomize(TinySwAV(preset)).eval()
    write_torch_checkpoint(root / "run", model, preset)
    meta_file = next((root / "run" / "checkpoints").glob("step_*/meta.json"))
    meta = json.loads(meta_file.read_text())
    meta["config"] = PretrainConfig(model=preset, crops=crops).to_dict() if crops else {}
    meta_file.write_text(json.dumps(meta))
    return model, root / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinySwAV, Path]:
    return _run(tmp_path_factory.mktemp("clients"), PRESET, CROPS)


@pytest.fixture(scope="module")
def hf_dir(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "export"
    export_checkpoint(trained[1], out, layout="hf")
    return out


def _ours(path: Path, x: torch.Tensor) -> torch.Tensor:
    """bigseer's own trunk loaded from ``path``, evaluated in float64."""
    with torch.no_grad():
        return copy.deepcopy(load_pretrained(path)).double()(x.double())


def _image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (131, 117, 3), dtype=np.uint8), "RGB")


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_hf_automodel_loads_strictly_and_gives_bigseer_features(hf_dir: Path) -> None:
    from transformers import AutoModel

    net, info = AutoModel.from_pretrained(str(hf_dir), output_loading_info=True)
    assert type(net).__name__ == "RegNetModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = _x()
    with torch.no_grad():
        theirs = net.double().eval()(x).pooler_output.flatten(1)
    assert_close_f64(theirs, _ours(hf_dir, x), "AutoModel pooled features")


def test_hf_image_processor_has_the_training_input(hf_dir: Path) -> None:
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(str(hf_dir))
    assert proc.size["shortest_edge"] == 96  # the largest crop of "2x96+4x48", not the processor default
    assert tuple(proc.image_mean) == IMAGENET_MEAN and tuple(proc.image_std) == IMAGENET_STD
    assert proc.crop_pct == 0.875
    pixels = proc(_image(), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 96, 96)


def test_hf_pipeline_features_equal_the_trunk_on_the_processed_image(hf_dir: Path) -> None:
    from transformers import AutoImageProcessor, pipeline

    pipe = pipeline("image-feature-extraction", model=str(hf_dir), dtype=torch.float64)
    image = _image()
    feats = pipe(image, pool=True, return_tensors=True).flatten(1)
    pixels = AutoImageProcessor.from_pretrained(str(hf_dir))(image, return_tensors="pt").pixel_values
    assert feats.dtype == torch.float64 and feats.shape == (1, PRESETS[PRESET].stages()[0][-1])
    assert_close_f64(feats, _ours(hf_dir, pixels), "pipeline('image-feature-extraction') features")


def test_hf_image_classification_gets_a_new_head_on_the_exported_trunk(hf_dir: Path) -> None:
    from transformers import AutoModelForImageClassification

    net, info = AutoModelForImageClassification.from_pretrained(str(hf_dir), num_labels=5,
                                                                output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.1.bias", "classifier.1.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    x = _x()
    net = net.double().eval()
    with torch.no_grad():
        assert net(x).logits.shape == (2, 5)
        backbone = net.regnet(x).pooler_output.flatten(1)
    assert_close_f64(backbone, _ours(hf_dir, x), "AutoModelForImageClassification backbone")


def test_hf_model_card_parses_with_hub_front_matter(hf_dir: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(hf_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "other"
    assert {"image-feature-extraction", "self-supervised", "swav", "seer"} <= set(card.data.tags)
    assert "crops: 2x96+4x48" in card.text and "num_prototypes: 256" in card.text
    assert "TODO: describe the pretraining images" in card.text


def test_default_input_size_and_bad_crops(tmp_path: Path) -> None:
    assert input_spec({}).size == 224 and input_spec({"config": {}}).size == 224
    assert input_spec({"config": {"crops": "2x160+4x96"}}).size == 160  # SEER-10B's crops
    _, run = _run(tmp_path, "regnety_tiny", None)
    export_checkpoint(run, tmp_path / "hf", layout="hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 224}
    with pytest.raises(ConfigError, match=r"^checkpoint meta config 'crops': bad crop spec '2x'"):
        input_spec({"config": {"crops": "2x"}})


@pytest.mark.parametrize("first", ["timm", "detectron2"])
def test_reexport_keeps_the_training_input(trained, tmp_path: Path, first: str) -> None:
    export_checkpoint(trained[1], tmp_path / first, layout=first)  # records the input in its metadata
    export_checkpoint(tmp_path / first, tmp_path / "hf", layout="hf")  # an export of the export
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": 96}


@pytest.fixture(scope="module")
def timm_dir(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timm") / "export"
    export_checkpoint(trained[1], out)
    return out


def test_timm_local_dir_loads_the_export(timm_dir: Path) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    net = timm.create_model(f"local-dir:{timm_dir}", pretrained=True)
    assert type(net).__module__ == "timm.models.regnet" and net.num_classes == 0
    exported = load_file(str(timm_dir / "model.safetensors"))
    sd = net.state_dict()
    assert set(sd) == set(exported) and all(torch.equal(sd[k], v) for k, v in exported.items())  # copies
    cfg = resolve_data_config({}, model=net)
    assert tuple(cfg["input_size"]) == (3, 96, 96) and cfg["crop_pct"] == 0.875
    assert tuple(cfg["mean"]) == IMAGENET_MEAN and tuple(cfg["std"]) == IMAGENET_STD
    assert create_transform(**cfg)(_image()).shape == (3, 96, 96)  # timm's eval transform at the trained size
    x = _x()
    with torch.no_grad():
        theirs = net.double().eval()(x)
    assert_close_f64(theirs, _ours(timm_dir, x), "timm local-dir features")
    head = timm.create_model(f"local-dir:{timm_dir}", pretrained=True, num_classes=7)
    assert head.get_classifier().out_features == 7
    assert torch.equal(head.state_dict()["s4.b1.conv2.conv.weight"], exported["s4.b1.conv2.conv.weight"])


def test_timm_local_dir_builds_a_preset_timm_has_no_name_for(tmp_path: Path) -> None:
    import timm

    _, run = _run(tmp_path, "regnety_tiny", "2x64+4x32")
    export_checkpoint(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "regnety_002" and config["model_args"]["w0"] == 16
    notes = json.loads((tmp_path / "out" / "export.json").read_text())["notes"]
    assert any("timm has no model named" in n for n in notes)
    net = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        theirs = net.double().eval()(x)
    assert_close_f64(theirs, _ours(tmp_path / "out", x), "timm local-dir regnety_tiny features")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_timm_config_builds_every_preset_exactly(preset: str, tmp_path: Path) -> None:
    """config.json alone (no weights: meta device) makes timm build the same tensors, up to SEER-10B."""
    import timm

    params = PRESETS[preset]
    config, _ = timm_config(params, input_spec({}))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert config["architecture"] == TIMM_NAMES.get(preset, "regnety_002")
    net = timm.create_model(f"local-dir:{tmp_path}", pretrained=False, device="meta")
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == {k: shape for k, (shape, _) in expected_trunk(params).items()}


def test_timm_notes_for_what_local_dir_cannot_read(trained, tmp_path: Path) -> None:
    """The notes say what timm really cannot do (if timm learns it, these asserts flag the stale note)."""
    import timm

    export_checkpoint(trained[1], tmp_path / "sharded", max_shard_size="1MB")
    notes = json.loads((tmp_path / "sharded" / "export.json").read_text())["notes"]
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert any(n.startswith("sharded export: timm's local-dir loader reads one weights file") for n in notes)
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model(f"local-dir:{tmp_path / 'sharded'}", pretrained=True)
    assert torch.equal(load_pretrained(tmp_path / "sharded").state_dict()["s4.b7.conv3.bn.bias"],
                       trained[0].trunk.s4.b7.conv3.bn.bias.detach())  # the note's alternative works
    export_checkpoint(trained[1], tmp_path / "head", include_head=True)
    notes = json.loads((tmp_path / "head" / "export.json").read_text())["notes"]
    assert any("timm's local-dir loader refuses unexpected keys" in n for n in notes)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm.create_model(f"local-dir:{tmp_path / 'head'}", pretrained=True)


def test_stale_client_files_are_removed(trained, tmp_path: Path) -> None:
    export_checkpoint(trained[1], tmp_path, layout="hf")
    export_checkpoint(trained[1], tmp_path, layout="torchvision")  # HF's config.json would misdescribe it
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "preprocessor_config.json").exists()
