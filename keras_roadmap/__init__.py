"""keras-roadmap: ROADMAP (Ramzi et al., NeurIPS 2021) for Keras 3 / TensorFlow."""

__version__ = "0.1.0"
