"""Two training steps of the official ROADMAP code and of ours, side by side, in float64.

    python benchmarks/official_step_parity.py --official-dir DIR [--backbone resnet50|deit_small]

DIR is a local checkout of the public elias-ramzi/ROADMAP repository; this script imports its
``roadmap`` package (our repository never copies it). The official code also imports
pytorch-metric-learning (its CalibrationLoss) and omegaconf (``roadmap.utils``); install them
anywhere on ``PYTHONPATH``, e.g. ``pip install --target /tmp/offdeps --no-deps
pytorch-metric-learning==0.9.99 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3``.

What it does (the SOP recipe's settings, ``keras_roadmap/recipes/configs/sop.yaml``):

1. Builds the official ``RetrievalNet`` (``--backbone resnet50``: resnet50, embed_dim 512;
   ``deit_small``: vit_deit_distilled, no projection, as the official ``model/deit.yaml``),
   ``pretrained=False``, seeded. For ResNet-50, sets the BatchNorm statistics from a forward
   pass in train mode with ``momentum=None`` (cumulative average) over the batch's photos and
   their flips (with default statistics a random ResNet-50 maps every image to the same
   embedding), then freezes BatchNorm with the official ``freeze_batch_norm`` (running
   statistics fixed, gamma/beta still trained). Converts the net to float64 (``.double()``).
2. Saves its state dict and loads it into our SOP recipe's embedder (``keras_roadmap/recipes/configs/sop.yaml``
   profile, ``keras_roadmap.recipes.assembly.build_encoder`` -> ``build_embedder(weights=.pth)``,
   which maps ``backbone.*`` to the trunk and ``fc`` to ``head_projection``), built under
   ``keras.config.set_floatx("float64")``.
3. Runs two training steps on each side on the same batch of 8 photos of 4 classes at 224 px
   (crops of scikit-learn's two sample photos, PIL bilinear resize, ImageNet normalisation):
   official: ``CalibrationLoss`` + ``SupAP`` (``loss/roadmap.yaml``) and the optimisers of
   ``optimizer/sop.yaml`` (Adam, coupled weight decay 1e-4, backbone lr 1e-5, fc lr 2e-5) or
   ``sop_deit.yaml`` (AdamW lr 1e-5, wd 5e-4); ours: ``ROADMAPLoss(dtype="float64")`` and
   ``assembly.build_recipe_optimizer`` (TorchAdam), one ``tf.GradientTape`` step each (our
   ``RetrievalTrainer.train_step`` casts embeddings to float32, so the step is written out here
   with the same loss/optimiser objects).

Prints: max |diff| of the embeddings before the steps, both losses at each step (and their
relative difference), and for each step the relative error of the change of the embeddings,
``||d_ours - d_official|| / ||d_official||`` with ``d = emb[k+1] - emb[k]``.

Control (``--control``, on by default): the official code against itself, same net, same
batch in reversed order (the loss is order-invariant, so only float64 rounding differs). Adam's
first updates are about ``lr * sign(g)``; a gradient component below the rounding level can
change sign, and from the second step on such differences grow. The control row shows how far
two float64 computations of the *same* official step drift apart: it is the floor for ours.

Shims (documented, none touches our logic or the official training logic):

* torchvision >= 0.13 dropped the ``pretrained=`` argument that the official ``get_backbone``
  passes, so ``torchvision.models.resnet*`` are wrapped to map ``pretrained=False`` to
  ``weights=None``.
* The official code pins torch 1.8.1, where backward through ``torch.heaviside`` silently
  carried no gradient; torch >= 1.9 raises ("derivative for heaviside is not implemented",
  ROADMAP issue #9). As for ``tests/data/official`` (see its FIXTURES.md), ``torch.heaviside`` is
  evaluated on a detached input: same forward values, zero gradient through the Heaviside
  pieces, as in the official training.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def photo_batch():
    """(8, 224, 224, 3) float64 ImageNet-normalised crops and (8,) labels: 4 classes = 4 regions
    of scikit-learn's two sample photos (china, flower), two crops of each region."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 photos
    boxes = [  # (photo, left, top, side): two crops of each region
        (0, 0, 0, 300),
        (0, 40, 30, 260),
        (0, 330, 100, 300),
        (0, 380, 150, 240),
        (1, 0, 60, 360),
        (1, 50, 100, 300),
        (1, 300, 0, 320),
        (1, 340, 60, 280),
    ]
    images = []
    for photo, left, top, side in boxes:
        crop = Image.fromarray(photos[photo][top : top + side, left : left + side])
        crop = np.asarray(crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float64)
        images.append((crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(images), np.repeat(np.arange(4), 2)


def _import_official(official_dir):
    import torch
    import torchvision.models as tv_models

    heaviside = torch.heaviside

    def heaviside_without_gradient(input, values, **kwargs):  # torch 1.8.1 behaviour
        return heaviside(input.detach(), values, **kwargs)

    torch.heaviside = heaviside_without_gradient

    for name in ("resnet18", "resnet50", "resnet101"):
        builder = getattr(tv_models, name)

        def compat(*args, _builder=builder, pretrained=None, **kwargs):
            if pretrained:
                raise RuntimeError("pretrained=True needs a download; this script runs offline.")
            return _builder(*args, **kwargs)

        setattr(tv_models, name, compat)
    sys.path.insert(0, str(pathlib.Path(official_dir).resolve()))
    import roadmap.losses as official_losses
    import roadmap.utils as official_utils
    from roadmap.models import RetrievalNet

    return RetrievalNet, official_losses, official_utils


class Official:
    """The official net, criterion and optimisers (``getter.py`` + ``base_update.py`` logic)."""

    def __init__(self, args, images):
        import torch

        RetrievalNet, losses, utils = _import_official(args.official_dir)
        self.torch = torch
        self.utils = utils
        torch.manual_seed(args.seed)
        if args.backbone == "resnet50":
            net = RetrievalNet(
                "resnet50", embed_dim=512, norm_features=False, without_fc=False, with_autocast=False, pretrained=False
            )
            self._set_batchnorm_statistics(net, images)
            net = utils.freeze_batch_norm(net)
        else:
            net = RetrievalNet(
                "vit_deit_distilled",
                embed_dim=384,
                norm_features=False,
                without_fc=True,
                with_autocast=False,
                pretrained=False,
            )
        self.net = net.double()
        self.criterion = [
            (losses.CalibrationLoss(pos_margin=0.9, neg_margin=0.6), 1.0),
            (losses.SupAP(tau=0.01, rho=100.0, offset=1.44, delta=0.05), 1.0),
        ]
        if args.backbone == "resnet50":
            self.optimizers = [
                torch.optim.Adam(self.net.backbone.parameters(), lr=1e-5, weight_decay=1e-4),
                torch.optim.Adam(self.net.fc.parameters(), lr=2e-5, weight_decay=1e-4),
            ]
        else:
            self.optimizers = [torch.optim.AdamW(self.net.parameters(), lr=1e-5, weight_decay=5e-4)]

    def _set_batchnorm_statistics(self, net, images):
        torch = self.torch
        batch = torch.from_numpy(np.concatenate([images, images[:, :, ::-1]]).copy()).permute(0, 3, 1, 2).float()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the forward passes
        net.train()
        with torch.no_grad():
            net(batch)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.1

    def embed(self, x):
        with self.torch.no_grad():
            return self.net(x).numpy()

    def step(self, x, labels):
        """One ``_batch_optimization`` + optimiser steps; returns the total loss."""
        torch = self.torch
        self.net.train()
        self.net.zero_grad()
        di = self.net(x)
        scores = torch.mm(di, di.t())
        label_matrix = self.utils.create_label_matrix(labels)
        total = 0
        for crit, weight in self.criterion:
            loss = crit(di, labels.view(-1)) if hasattr(crit, "takes_embeddings") else crit(scores, label_matrix)
            total = total + weight * loss.mean()
        total.backward()
        for opt in self.optimizers:
            opt.step()
        self.net.zero_grad()
        return float(total.item())


class Ours:
    """Our SOP recipe's embedder, loss and optimiser, in float64."""

    def __init__(self, args, official_state):
        import keras

        keras.config.set_floatx("float64")
        from keras_roadmap.recipes import assembly
        from keras_roadmap.recipes.catalog import config_path
        from keras_roadmap.recipes.config import load_yaml, resolve_config

        raw = load_yaml(config_path("sop"))
        config = resolve_config(raw, source="sop.yaml", overrides={"backbone": args.backbone})
        config.image_size = IMAGE_SIZE
        config.loss["dtype"] = "float64"
        self.config = config
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            # The official net's state dict, loaded as a user would: build_embedder(weights=.pth)
            # maps its backbone.* to the trunk and its fc to head_projection.
            path = os.path.join(tmp, "official_retrieval_net.pth")
            torch.save(official_state, path)
            self.model = assembly.build_encoder(config, weights=path)
        self.loss = assembly.build_loss(config)
        self.optimizer = assembly.build_recipe_optimizer(config, steps_per_epoch=100)
        self.optimizer.build(self.model.trainable_variables)

    def embed(self, x):
        return np.asarray(self.model(x, training=False))

    def step(self, x, labels):
        import tensorflow as tf

        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.loss(labels, self.model(x, training=True))
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-dir", required=True, help="local checkout of elias-ramzi/ROADMAP")
    parser.add_argument("--backbone", choices=("resnet50", "deit_small"), default="resnet50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the official-vs-official (reversed batch order) control",
    )
    args = parser.parse_args(argv)
    if not (pathlib.Path(args.official_dir) / "roadmap" / "models" / "net.py").is_file():
        parser.error(f"{args.official_dir} is not a checkout of elias-ramzi/ROADMAP (no roadmap/models/net.py).")

    import torch

    torch.set_default_dtype(torch.float32)
    started = time.perf_counter()
    images, labels = photo_batch()
    official = Official(args, images)
    ours = Ours(args, official.net.state_dict())
    x_torch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y_torch = torch.from_numpy(labels)

    off_emb = [official.embed(x_torch)]
    our_emb = [ours.embed(images)]
    control, control_emb = None, None
    if args.control:
        control = Official(args, images)  # same seed: the same net
        reverse = torch.arange(len(labels) - 1, -1, -1)
        x_rev, y_rev = x_torch[reverse].contiguous(), y_torch[reverse].contiguous()
        control_emb = [control.embed(x_rev)[reverse.numpy()]]
    cosine = off_emb[0] @ off_emb[0].T
    rows = [
        ("embeddings before the steps: max |ours - official|", f"{np.abs(our_emb[0] - off_emb[0]).max():.2e}"),
        (
            "  (official pairwise cosine: min / max off-diagonal)",
            f"{cosine[~np.eye(8, dtype=bool)].min():.4f} / {cosine[~np.eye(8, dtype=bool)].max():.4f}",
        ),
    ]
    for step in range(1, args.steps + 1):
        loss_off = official.step(x_torch, y_torch)
        loss_ours = ours.step(images, labels)
        off_emb.append(official.embed(x_torch))
        our_emb.append(ours.embed(images))
        d_off = off_emb[-1] - off_emb[-2]
        d_ours = our_emb[-1] - our_emb[-2]
        rel = np.linalg.norm(d_ours - d_off) / np.linalg.norm(d_off)
        rows.append(
            (
                f"step {step} loss: official / ours (relative diff)",
                f"{loss_off:.12f} / {loss_ours:.12f} ({abs(loss_ours - loss_off) / abs(loss_off):.1e})",
            )
        )
        rows.append(
            (
                f"step {step} change of embeddings: ||d_ours - d_off|| / ||d_off||",
                f"{rel:.2e}  (||d_off|| = {np.linalg.norm(d_off):.3e}, max |d_off - d_ours| = "
                f"{np.abs(d_ours - d_off).max():.1e})",
            )
        )
        if control is not None:
            loss_control = control.step(x_rev, y_rev)
            control_emb.append(control.embed(x_rev)[reverse.numpy()])
            d_control = control_emb[-1] - control_emb[-2]
            rows.append(
                (
                    "  control, official reversed batch: loss rel. diff / change rel. err",
                    f"{abs(loss_control - loss_off) / abs(loss_off):.1e} / "
                    f"{np.linalg.norm(d_control - d_off) / np.linalg.norm(d_off):.2e}",
                )
            )
    width = max(len(r[0]) for r in rows)
    print(f"\nofficial_step_parity --backbone {args.backbone} (float64, batch 8 x 224 px, 4 classes)")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"({time.perf_counter() - started:.0f} s, load average {open('/proc/loadavg').read().split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
