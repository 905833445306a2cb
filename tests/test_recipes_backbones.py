"""Each recipe config's real backbone profile -> embedder + optimiser + loss (+ memory) -> one
training step on a batch of 8, at a small image size and without pretrained weights.

The models' own tests cover every backbone's build and step; this checks the recipe's assembly
of the paper configurations (the head learning rate, decay style, loss preset, memory mode and
embedding size that each config asks for) trains.
"""

import numpy as np
import pytest

from keras_roadmap.recipes import assembly
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.config import load_yaml, resolve_config

CONFIGS = CONFIG_DIR
EXPECTED_DIM = {"resnet50": 512, "resnet50_max_ln": 512, "deit_small_distilled": 384, "deit_base": 768, "tiny_cnn": 64}


def paper_profiles():
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.stem.startswith("suprank_"):
            continue  # warm-up and proxies: tests/test_recipes_suprank.py
        for profile in load_yaml(path)["backbones"]:
            yield pytest.param(path, profile, id=f"{path.stem}-{profile}")


@pytest.mark.slow
@pytest.mark.parametrize("path, profile", paper_profiles())
def test_paper_profile_trains_one_step(path, profile):
    import keras

    config = resolve_config(
        load_yaml(path), source=path.name, overrides={"backbone": profile, "weights": "none", "memory": 64}
    )
    config.image_size = 32  # divisible by DeiT's patch size; keeps the CPU step small
    if config.chunk_size:
        config.chunk_size = 4  # the batch of 8 in two chunks (gradient caching), as RS@k's 4,000 in 200s
    encoder = assembly.build_encoder(config)
    assert encoder.output_shape == (None, EXPECTED_DIM[config.model])
    trainer = assembly.build_trainer(config, encoder, steps_per_epoch=5, jit_compile=False)
    # One eager step: tracing a ResNet/DeiT training graph costs ~1 min of CPU per model here;
    # the compiled (XLA) path of the same train_step runs in the smoke-recipe tests.
    trainer.run_eagerly = True
    optimizer = trainer.optimizer
    assert optimizer.decay_style == ("decoupled" if config.optimizer["name"] == "adamw" else "coupled")
    if config.loss.get("name", "roadmap") == "roadmap":  # the ROADMAP paper's presets and memory modes
        assert trainer.loss.get_config()["offset"] == (1.0 if config.dataset == "inaturalist" else 1.44)
        assert trainer.memory.unique == (config.dataset != "inaturalist")
    assert trainer.chunk_size == config.chunk_size

    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.repeat(np.arange(2), 4).astype("int32")
    targets = {"label": labels, "sample_id": np.arange(8, dtype="int64")} if trainer.memory.unique else labels
    before = [v.numpy().copy() for v in encoder.trainable_variables]
    logs = trainer.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, encoder.trainable_variables, strict=False)]
    assert all(changed), f"{sum(not c for c in changed)} trainable variables did not move"
    # The head (if any) moved with its own learning rate factor.
    head = [v for v in encoder.trainable_variables if v.path.startswith("head_")]
    if config.optimizer["head_lr"] is not None:
        assert head and optimizer.lr_factor_for(head[0].path) == pytest.approx(
            config.optimizer["head_lr"] / config.optimizer["backbone_lr"]
        )
    keras.backend.clear_session()
