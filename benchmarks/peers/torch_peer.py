"""One peer-library training run for ``benchmarks/peer_comparison.py``, in the peer's own venv.

Runs with torch + Pillow + the peer library only (no keras-roadmap, no TensorFlow):

    PEER_PYTHON benchmarks/peers/torch_peer.py --library pml --loss multisimilarity \\
        --split split.csv --steps 600 --out emb.npz

* the same network as our ``tiny_cnn`` embedder: three Conv3x3 (16/32/64, no bias) ->
  BatchNorm -> ReLU blocks, 2x2 max pooling after the first two, global average pooling,
  Linear(64), L2 normalisation; PyTorch's default initialisation;
* the same data: the rows of ``split.csv`` (keras-roadmap's OML-style split) with ``split ==
  train``, the same transform as ``train custom``'s (the SOP preset rescaled to the image size:
  Resize + RandomResizedCrop((0.16, 1), (0.75, 1.33)) + flip for training; square Resize +
  CenterCrop for the test images; ImageNet mean/std), the same batch (classes x samples per class),
  Adam at the same learning rate, the same number of steps;
* the peer's own sampler and loss: pytorch-metric-learning's ``MPerClassSampler`` with
  ``MultiSimilarityLoss`` + ``MultiSimilarityMiner`` or ``ContrastiveLoss``; open-metric-learning's
  ``BalanceSampler`` with its ``TripletLossWithMiner`` (margin 0.1 as in its README's example,
  its default all-triplets miner).

Writes the embeddings of the held-out rows (``split`` other than ``train``) (their labels, query/gallery flags) to
``--out``; the caller evaluates every library with the same exact evaluator.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), "float32")
IMAGENET_STD = np.array((0.229, 0.224, 0.225), "float32")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=("pml", "oml"), required=True)
    parser.add_argument("--loss", choices=("multisimilarity", "contrastive", "triplet"), required=True)
    parser.add_argument("--split", required=True, help="split.csv from keras-roadmap prepare")
    parser.add_argument("--out", required=True, help="npz of the test embeddings")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--classes-per-batch", type=int, default=16)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


class TinyCNN(torch.nn.Module):
    def __init__(self, width=16, dim=64):
        super().__init__()
        layers, channels = [], 3
        for block, filters in enumerate((width, 2 * width, 4 * width)):
            layers += [
                torch.nn.Conv2d(channels, filters, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(filters),
                torch.nn.ReLU(),
            ]
            if block < 2:
                layers.append(torch.nn.MaxPool2d(2))
            channels = filters
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, dim)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return torch.nn.functional.normalize(self.head(x), dim=1)


def read_split(path):
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if not os.path.isabs(row["path"]):
            row["path"] = os.path.join(folder, row["path"])
    return rows


def _resize_shorter(image, side):
    w, h = image.size
    if w <= h:
        return image.resize((side, int(side * h / w)), Image.BILINEAR)
    return image.resize((int(side * w / h), side), Image.BILINEAR)


def _random_resized_crop(image, size, rng, scale=(0.16, 1.0), ratio=(0.75, 1.33)):
    """torchvision's RandomResizedCrop: 10 tries at an (area, log-uniform aspect) box, else the
    centre crop of the clamped aspect ratio."""
    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            return image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def _to_tensor(image):
    x = (np.asarray(image, "float32") / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).astype("float32"))


def transforms(size, seed):
    """The SOP preset rescaled to `size` (as `train custom` uses it), on PIL images: train =
    Resize(shorter side) + RandomResizedCrop + horizontal flip, test = square Resize + CenterCrop."""
    resize = round(256 * size / 224)
    rng = np.random.default_rng(seed)

    def train(image):
        image = _random_resized_crop(_resize_shorter(image, resize), size, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(image)

    def test(image):
        image = image.resize((resize, resize), Image.BILINEAR)
        offset = int(round((resize - size) / 2))
        return _to_tensor(image.crop((offset, offset, offset + size, offset + size)))

    return train, test


class Images(torch.utils.data.Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform
        self.cache = {}

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if i not in self.cache:
            self.cache[i] = rgb(self.paths[i])
        return self.transform(self.cache[i]), self.labels[i]


# keras_roadmap.data.presets.TRANSPARENT_BACKGROUND (this venv has no keras-roadmap): transparent
# images are composited on it as keras-roadmap's loader does, so every library sees the same pixels.
BACKGROUND = (255, 255, 255)


def rgb(path):
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def sampler_and_loss(args, labels):
    batch = args.classes_per_batch * args.samples_per_class
    if args.library == "pml":
        from pytorch_metric_learning import losses, miners, samplers

        sampler = samplers.MPerClassSampler(
            labels, m=args.samples_per_class, batch_size=batch, length_before_new_iter=args.steps * batch
        )
        if args.loss == "multisimilarity":
            loss, miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
            return torch.utils.data.BatchSampler(sampler, batch, drop_last=True), lambda e, y: loss(e, y, miner(e, y))
        loss = losses.ContrastiveLoss()
        return torch.utils.data.BatchSampler(sampler, batch, drop_last=True), lambda e, y: loss(e, y)
    from oml.losses import TripletLossWithMiner
    from oml.samplers import BalanceSampler

    sampler = BalanceSampler(labels, n_labels=args.classes_per_batch, n_instances=args.samples_per_class)
    # margin has no default in OML 4.0; 0.1 is its README's training example (miner: its default,
    # AllTripletsMiner).
    loss = TripletLossWithMiner(margin=0.1)
    return sampler, lambda e, y: loss(e, y)


def _flag(value):
    return str(value).strip().lower() in ("1", "true", "yes")


def library_version(name):
    from importlib.metadata import version

    return version({"pml": "pytorch-metric-learning", "oml": "open-metric-learning"}[name])


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = read_split(args.split)
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] != "train"]  # "validation" in OML's convention
    names = sorted({r["label"] for r in train_rows})
    index = {name: i for i, name in enumerate(names)}
    train_labels = [index[r["label"]] for r in train_rows]
    train_tf, test_tf = transforms(args.image_size, args.seed)
    train = Images([r["path"] for r in train_rows], train_labels, train_tf)
    batch_sampler, criterion = sampler_and_loss(args, train_labels)
    loader = torch.utils.data.DataLoader(train, batch_sampler=batch_sampler, num_workers=0)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.train()
    steps, losses = 0, []
    train_start = time.perf_counter()
    while steps < args.steps:
        for x, y in loader:
            value = criterion(model(x), y)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            losses.append(value.item())
            steps += 1
            if steps == args.steps:
                break
    train_seconds = time.perf_counter() - train_start
    model.eval()
    test = Images([r["path"] for r in test_rows], list(range(len(test_rows))), test_tf)
    with torch.no_grad():
        chunks = [model(x).numpy() for x, _ in torch.utils.data.DataLoader(test, batch_size=256)]
    np.savez(
        args.out,
        embeddings=np.concatenate(chunks).astype("float32"),
        labels=np.array([r["label"] for r in test_rows]),
        is_query=np.array([_flag(r.get("is_query")) for r in test_rows]),
        is_gallery=np.array([_flag(r.get("is_gallery")) for r in test_rows]),
    )
    print(
        json.dumps(
            {
                "library": args.library,
                "version": library_version(args.library),
                "torch": torch.__version__,
                "loss": args.loss,
                "steps": steps,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - start,
                "first_loss": losses[0],
                "last_loss": float(np.mean(losses[-20:])),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
