"""Data for training and scoring: data sets as tensors (:func:`~pyro_vae.load_mnist`,
:func:`~pyro_vae.make_circle`), shuffled minibatches with their indices on the training device
(:class:`~pyro_vae.Batches`), and streamed batches from a ``DataLoader``
(:class:`~pyro_vae.Indexed`, :class:`~pyro_vae.Loader`).

Modules: ``datasets``, ``batches`` and ``loaders``.
"""

from .batches import Batches
from .datasets import default_data_dir, load_mnist, make_circle
from .loaders import Indexed, Loader

__all__ = ["Batches", "Indexed", "Loader", "default_data_dir", "load_mnist", "make_circle"]
