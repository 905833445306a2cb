"""torchvision / timm checkpoints -> our trunks: parity with the torch models they come from.

The references are random-initialised torchvision / timm models built here (no download), with
BatchNorm statistics and affine parameters randomised (defaults would make BN an identity and
hide a wrong statistics mapping). Needs the `[torch]` extra (torch, torchvision, timm,
safetensors), which CI installs.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

import keras  # noqa: E402

from keras_roadmap.cli import main as cli_main  # noqa: E402
from keras_roadmap.models import FrozenStatsBatchNormalization, build_embedder, read_state_dict  # noqa: E402

RESNET_SHAPE = (64, 64, 3)
# <= 1e-4 relative to the feature scale (max |reference|), float32.
RTOL = 1e-4


def _relative_error(ours, reference):
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def torchvision_resnet(tmp_path_factory):
    """A random torchvision ResNet-50 (BN randomised, eval mode), saved as .pth and .safetensors;
    returns (dir, input batch (2, 64, 64, 3), reference trunk features NHWC). The folder also
    holds "retrieval_net.pth": the state dict of the official ROADMAP RetrievalNet layout
    (backbone = the Sequential trunk, fc = Linear(2048, 512)) and "retrieval_net_ref.npy", its
    L2-normalised embeddings of the batch."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
    net.eval()
    folder = tmp_path_factory.mktemp("resnet")
    torch.save(net.state_dict(), folder / "resnet50.pth")
    safetensors_torch.save_file(net.state_dict(), str(folder / "resnet50.safetensors"))
    x = np.random.default_rng(0).normal(size=(2, *RESNET_SHAPE)).astype("float32")
    trunk = torch.nn.Sequential(*list(net.children())[:-2])
    with torch.no_grad():
        reference = trunk(_nchw(x)).permute(0, 2, 3, 1).numpy()
        fc = torch.nn.Linear(2048, 512)
        pooled = trunk(_nchw(x)).mean(dim=(2, 3))
        np.save(folder / "retrieval_net_ref.npy", torch.nn.functional.normalize(fc(pooled), dim=1).numpy())
    state = {f"backbone.{k}": v for k, v in trunk.state_dict().items()}
    state.update({f"fc.{k}": v for k, v in fc.state_dict().items()})
    torch.save(state, folder / "retrieval_net.pth")
    return folder, x, reference


@pytest.mark.slow
@pytest.mark.parametrize("filename", ["resnet50.pth", "resnet50.safetensors"])
def test_resnet50_trunk_equals_torchvision(torchvision_resnet, filename):
    folder, x, reference = torchvision_resnet
    model = build_embedder("resnet50", weights=folder / filename, input_shape=RESNET_SHAPE)
    backbone = model.get_layer("backbone")
    features = backbone(x)
    assert features.shape == reference.shape == (2, 2, 2, 2048)
    assert _relative_error(features, reference) <= RTOL
    # The recipes' models freeze BatchNorm the official way after loading.
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 53 and all(isinstance(bn, FrozenStatsBatchNormalization) and bn.trainable for bn in bns)
    assert _relative_error(backbone(x, training=True), reference) <= RTOL


@pytest.mark.slow
def test_convert_weights_cli_writes_a_loadable_weights_file(torchvision_resnet, tmp_path, capsys):
    folder, x, reference = torchvision_resnet
    dst = tmp_path / "resnet50.weights.h5"
    code = cli_main(
        ["convert-weights", str(folder / "resnet50.pth"), str(dst), "--model", "resnet50", "--image-size", "64"]
    )
    assert code == 0, capsys.readouterr().err
    assert "fc.weight" in capsys.readouterr().out  # the classifier is reported as not used
    model = build_embedder("resnet50", weights=dst, input_shape=RESNET_SHAPE)
    assert _relative_error(model.get_layer("backbone")(x), reference) <= RTOL
    assert (
        cli_main(["convert-weights", str(folder / "resnet50.pth"), str(tmp_path / "x.h5"), "--model", "resnet50"]) == 2
    )
    assert cli_main(["convert-weights", str(folder / "resnet50.pth"), str(dst), "--model", "tiny_cnn"]) == 2
    assert "loads no torch/timm checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_official_retrieval_net_state_dict_loads_trunk_and_head(torchvision_resnet):
    folder, x, reference = torchvision_resnet
    model = build_embedder("resnet50", weights=folder / "retrieval_net.pth", input_shape=RESNET_SHAPE)
    assert _relative_error(model.get_layer("backbone")(x), reference) <= RTOL
    np.testing.assert_allclose(np.asarray(model(x)), np.load(folder / "retrieval_net_ref.npy"), atol=1e-5)
    with pytest.raises(ValueError, match="pass embedding_dim=512"):
        build_embedder("resnet50", weights=folder / "retrieval_net.pth", input_shape=RESNET_SHAPE, embedding_dim=64)


def _deit_input():
    return np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype("float32")


@pytest.mark.slow
def test_deit_small_trunk_equals_timm(tmp_path):
    torch.manual_seed(1)
    reference_model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    # The DeiT release wraps its state dict as {"model": ...}.
    torch.save({"model": reference_model.state_dict()}, tmp_path / "deit_small.pth")
    x = _deit_input()
    with torch.no_grad():
        reference = reference_model.forward_features(_nchw(x)).numpy()
    model = build_embedder("deit_small", weights=tmp_path / "deit_small.pth")
    tokens = model.get_layer("backbone")(x)
    assert tokens.shape == reference.shape == (1, 197, 384)
    assert _relative_error(tokens, reference) <= RTOL
    # The embedding is the L2-normalised class token (no projection), as the official net.
    cls = reference[:, 0] / np.linalg.norm(reference[:, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x)), cls, atol=1e-5)


@pytest.mark.slow
def test_distilled_deit_loads_with_the_official_token_removal(tmp_path):
    torch.manual_seed(2)
    distilled = timm.create_model("deit_small_distilled_patch16_224", pretrained=False).eval()
    safetensors_torch.save_file(distilled.state_dict(), str(tmp_path / "distilled.safetensors"))
    assert "dist_token" in read_state_dict(tmp_path / "distilled.safetensors")
    # The official roadmap/models/net.py: drop the distillation token's position embedding and
    # load into a plain DeiT-S (strict=False drops dist_token and head_dist).
    plain = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    state = distilled.state_dict()
    state["pos_embed"] = torch.cat((state["pos_embed"][:, :1], state["pos_embed"][:, 2:]), dim=1)
    plain.load_state_dict(state, strict=False)
    x = _deit_input()
    with torch.no_grad():
        reference = plain.forward_features(_nchw(x)).numpy()
    model = build_embedder("deit_small_distilled", weights=tmp_path / "distilled.safetensors")
    tokens = model.get_layer("backbone")(x)
    assert tokens.shape == (1, 197, 384)  # class token + patches: no distillation token
    assert _relative_error(tokens, reference) <= RTOL


def test_checkpoint_errors_are_clear(torchvision_resnet, tmp_path):
    folder, _, _ = torchvision_resnet
    with pytest.raises(ValueError, match="not a timm_vit state dict"):
        build_embedder("deit_small", weights=folder / "resnet50.safetensors", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="loads no torch/timm checkpoint"):
        build_embedder("tiny_cnn", weights=folder / "resnet50.pth", input_shape=(32, 32, 3))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_embedder("resnet50", weights=tmp_path / "missing.pth")
    # DeiT position embeddings fix the image size.
    torch.manual_seed(3)
    deit = timm.create_model("deit_small_patch16_224", pretrained=False)
    safetensors_torch.save_file(deit.state_dict(), str(tmp_path / "deit.safetensors"))
    with pytest.raises(ValueError, match=r"fix the image size.*\(224, 224, 3\)"):
        build_embedder("deit_small", weights=tmp_path / "deit.safetensors", input_shape=(32, 32, 3))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read a torch state dict"):
        build_embedder("resnet50", weights=tmp_path / "junk.pth", input_shape=(32, 32, 3))
