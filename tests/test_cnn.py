"""MONAI CNN baselines (densenet121, resnet18, resnet50) through modeling and the pipeline stages.

Built from the config (2D for X-ray, 3D for MRI), saved as safetensors and rebuilt from the saved kwargs
alone, optimizer groups without decay on norms/biases, and one ResNet-18 trained, evaluated, registered and
scored through the CLI on the synthetic X-ray cohort.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers.pipeline import cohort_config, sqlite_uri
from mlflow import MlflowClient
from monai.networks import nets
from safetensors import safe_open
from torch import nn

import medvit
from pipelines.cli import cli
from pipelines.config import ConfigError, dump_config
from pipelines.data.manifest import read_manifest
from pipelines.scoring.model_package import load_packaged_model
from pipelines.stages.train import run_train
from pipelines.training.modeling import (
    CNN_ARCHS,
    arch_of,
    build_model,
    is_vit,
    load_model,
    model_kwargs,
    param_groups,
    save_model,
)

SIZES = {"xray": 32, "mri": [32, 32, 32]}  # densenet121 needs >= 29 pixels per side
MONAI_CLASS = {"densenet121": nets.DenseNet121, "resnet18": nets.ResNet, "resnet50": nets.ResNet}
# 2D: torchvision's ImageNet networks less the 3->1 input channels and 1000->1 classes (e.g. resnet18:
# 11,689,512 - 64*2*49 - 1000*513 + 513); 3D: the same networks with 3D kernels
N_PARAMS = {("densenet121", "xray"): 6_948_609, ("resnet18", "xray"): 11_170_753, ("resnet50", "xray"): 23_503_809,
            ("densenet121", "mri"): 11_243_649, ("resnet18", "mri"): 33_160_513, ("resnet50", "mri"): 46_157_121}


def config_for(arch: str, kind: str, tmp: Path, **model):
    size = SIZES[kind]
    preprocess = {"xray": {"img_size": size}} if kind == "xray" else {"mri": {"img_size": size}}
    return cohort_config(tmp, kind, tmp / "out", model={"arch": arch, **model}, preprocess=preprocess)


def _perturb_batchnorm_stats(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One train-mode forward so the running statistics differ from their initial values (eval then uses them)."""
    model.train()
    with torch.no_grad():
        model(torch.randn(shape) * 3 + 1)
    model.eval()


# ---- build, forward, save/load --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["xray", "mri"])
@pytest.mark.parametrize("arch", CNN_ARCHS)
def test_cnn_builds_from_config_and_round_trips_through_safetensors(arch, kind, tmp_path):
    config = config_for(arch, kind, tmp_path)
    kwargs = model_kwargs(config)
    dims = 2 if kind == "xray" else 3
    assert kwargs["arch"] == arch == arch_of(kwargs) and kwargs["spatial_dims"] == dims
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON-native: resume compares the round-tripped kwargs
    torch.manual_seed(0)
    model = build_model(kwargs)
    assert isinstance(model, MONAI_CLASS[arch]) and not is_vit(model)
    first_conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first_conv.weight.ndim == dims + 2 and first_conv.in_channels == 1
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS[arch, kind]

    shape = (2, 1, *([SIZES["xray"]] * 2 if kind == "xray" else SIZES["mri"]))
    _perturb_batchnorm_stats(model, shape)
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1) and torch.isfinite(y).all()

    path = tmp_path / "best.safetensors"
    save_model(path, model, kwargs, {"epoch": 1})
    with open(path, "rb") as handle:  # safetensors (no pickle): u64 header length, then a JSON header
        header = handle.read(int.from_bytes(handle.read(8), "little"))
    assert json.loads(header)["__metadata__"]["model_kwargs"]
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["model_kwargs"])["arch"] == arch
    loaded, loaded_kwargs, extra = load_model(path)
    assert loaded_kwargs == kwargs and extra == {"epoch": 1} and not loaded.training
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


# ---- optimizer groups -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", CNN_ARCHS)
def test_cnn_param_groups_skip_decay_for_norms_and_biases(arch, tmp_path):
    model = build_model(model_kwargs(config_for(arch, "xray", tmp_path)))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids_decay, ids_no = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_no and len(ids_decay | ids_no) == len(list(model.parameters()))
    norms = biases = weights = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert id(param) in ids_no, f"{type(module).__name__}.{name} is decayed"
                norms += 1
            elif name == "bias":
                assert id(param) in ids_no, f"{type(module).__name__}.bias is decayed"
                biases += 1
            else:
                assert isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight"
                assert id(param) in ids_decay, f"{type(module).__name__}.weight is not decayed"
                weights += 1
    assert norms > 0 and biases >= 1 and weights > 0  # BN weight/bias, the head's bias, conv/linear weights


def test_vit_kwargs_have_no_arch_key_and_still_load_as_vit(tmp_path):
    """Models saved before CNN support (kwargs without ``arch``) rebuild as the medvit ViT, hybrid included."""
    for arch, stem in (("vit", "patch"), ("hybrid", "conv")):
        config = config_for(arch, "xray", tmp_path, preset="vit_tiny", embed_dim=16, depth=1, num_heads=2,
                            patch_size=8)
        kwargs = model_kwargs(config)
        assert "arch" not in kwargs and kwargs["stem"] == stem and arch_of(kwargs) == arch
        model = build_model(kwargs)
        save_model(tmp_path / f"{arch}.safetensors", model, kwargs)
        loaded, _, _ = load_model(tmp_path / f"{arch}.safetensors")
        assert isinstance(loaded, medvit.VisionTransformer) and is_vit(loaded)
        assert loaded.patch_embed.__class__ is model.patch_embed.__class__


def test_cnn_config_problems_are_config_errors(tmp_path):
    small = cohort_config(tmp_path, "xray", tmp_path / "out", model={"arch": "densenet121"},
                          preprocess={"xray": {"img_size": 24}})
    with pytest.raises(ConfigError, match="densenet121 needs at least 29 pixels"):
        model_kwargs(small)
    smallest = model_kwargs(cohort_config(tmp_path, "xray", tmp_path / "out", model={"arch": "densenet121"},
                                          preprocess={"xray": {"img_size": 29}}))
    model = build_model(smallest).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 29, 29)).shape == (1, 1)  # the bound is tight: 28 fails in MONAI
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        model_kwargs(config_for("resnet18", "xray", tmp_path, grad_checkpointing=True))


# ---- end to end through the CLI -----------------------------------------------------------------------------
def _invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and result.exit_code else ""
    return result.exit_code, f"{args[0]}: exit {result.exit_code}\n{result.output}\n{tb}"


def _e2e_config(cohort: Path, root: Path, **train):
    uri = sqlite_uri(root)
    return cohort_config(
        cohort, "xray", root / "run", model={"arch": "resnet18"},
        train={"epochs": 2, "batch_size": 6, "lr": 1e-3, "num_workers": 0, "deterministic": True, "amp": "bf16",
               "early_stopping_patience": None, "warmup_epochs": 0.5, "device": "cpu", **train},
        evaluate={"bootstrap": 50},
        tracking={"uri": uri, "experiment": "medvit_cnn", "system_metrics": False},
        registry={"name": "medvit_cnn"})


@pytest.fixture(scope="module")
def cnn_ingested(xray_cohort, tmp_path_factory):
    """(root, config file, number of labelled train series) after `medvit ingest` of the X-ray cohort."""
    root = tmp_path_factory.mktemp("cnn_e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's default ./mlruns artifact root lands here
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config_path = root / "config.yaml"
        config_path.write_text(dump_config(_e2e_config(xray_cohort, root)))
        code, info = _invoke(["ingest", "--config", str(config_path)])
        assert code == 0, info
        manifest = read_manifest(root / "run" / "manifest.parquet")
        n_train = int(((manifest["split"] == "train") & manifest["label"].notna()).sum())
        yield root, config_path, n_train


def test_resnet18_trains_evaluates_registers_and_scores_via_the_cli(cnn_ingested, xray_cohort):
    root, config_path, n_train = cnn_ingested
    uri, registry = sqlite_uri(root), "medvit_cnn"
    # a batch size whose last batch is not a single image (see the xfail test below)
    batch = next(b for b in (6, 5, 4, 7) if n_train % b != 1)
    for stage in ("train", "evaluate", "register"):
        extra = ["--set", f"train.batch_size={batch}"] if stage == "train" else []
        code, info = _invoke([stage, "--config", str(config_path), *extra])
        assert code == 0, info

    best = root / "run" / "train" / "best.safetensors"
    _, kwargs, _ = load_model(best)
    assert kwargs["arch"] == "resnet18" and kwargs["spatial_dims"] == 2
    summary = json.loads((root / "run" / "train" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and (root / "run" / "train" / "last.safetensors").is_file()
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version_by_alias(registry, "candidate")
    train_run = client.get_run(summary["run_id"])
    assert train_run.data.params["model.arch"] == "resnet18" and train_run.data.tags["medvit.amp"] == "bfloat16"
    assert {"train_loss", "val_auroc"} <= set(train_run.data.metrics)

    model_uri = f"models:/{registry}@candidate"
    loaded = load_packaged_model(model_uri, tracking=uri)
    assert loaded.version == str(version.version) and loaded.meta["kind"] == "xray"
    assert loaded.model_kwargs["arch"] == "resnet18" and loaded.config.model.arch == "resnet18"
    assert isinstance(loaded.model, nets.ResNet) and not is_vit(loaded.model)

    out = root / "scores"
    code, info = _invoke(["score", str(xray_cohort / "dicom"), "--model", model_uri, "--out", str(out),
                          "--device", "cpu", "--workers", "0", "--heatmaps"], env={"MLFLOW_TRACKING_URI": uri})
    assert code == 0, info
    scores = pd.read_csv(out / "scores.csv")
    studies = set(pd.read_csv(xray_cohort / "labels.csv")["StudyInstanceUID"])
    assert len(scores) == len(studies) == 24 and set(scores["StudyInstanceUID"]) == studies
    assert scores["score"].between(0, 1).all() and scores["StudyInstanceUID"].is_unique
    assert not (out / "heatmaps").exists() or not any((out / "heatmaps").iterdir())  # no attention in a CNN


def test_cnn_trains_when_the_last_batch_holds_one_image(cnn_ingested, xray_cohort, tmp_path):
    root, _, n_train = cnn_ingested
    out = tmp_path / "run"
    out.mkdir()
    for name in ("manifest.parquet", ".pseudonym_key"):
        (out / name).write_bytes((root / "run" / name).read_bytes())
    config = _e2e_config(xray_cohort, tmp_path, epochs=1, batch_size=n_train - 1, amp="off")
    config.output.dir = out
    result = run_train(config, track=False)
    assert result.epochs_run == 1
