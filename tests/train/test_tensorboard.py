"""fit(log=pv.Logging(tensorboard=...)): TensorBoard scalars and images, read back from the
event file."""

from __future__ import annotations

import sys

import pyro
import pytest
import torch
from helpers import SHUFFLING_LOADER, bernoulli_vae, generator, here

import pyro_vae as pv

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def small_vae() -> pv.VAE:
    return bernoulli_vae(784)


def test_fit_writes_scalars_and_images(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(64, 784).round()
    vae = small_vae()
    history = pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=16),
        epochs=3,
        device=here(),
        log=pv.Logging(progress=False, every=2, tensorboard=tmp_path, images_every=1),
        loss=pv.BetaELBO(lambda epoch: epoch / 4),
        validation=pv.Batches(x[:32], batch_size=16),
    )
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    loss = scalars("train/loss")
    assert [s for s, _ in loss] == history.epoch == [1, 2, 3]
    assert [v for _, v in loss] == pytest.approx(history.loss, rel=1e-6)
    val = scalars("validation/elbo")
    assert [s for s, _ in val] == history.val_epoch
    assert [v for _, v in val] == pytest.approx(history.val_elbo, rel=1e-6)
    assert scalars("train/beta") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    # 4 steps per epoch, read at steps 0 and 2 of each: global steps 0, 2, 4, 6, 8, 10
    assert [s for s, _ in scalars("train/loss_running")] == [0, 2, 4, 6, 8, 10]
    tags = events.Tags()["images"]
    assert set(tags) == {"images/samples", "images/reconstructions"}
    assert [e.step for e in events.Images("images/samples")] == [1, 2, 3]


def test_logging_leaves_training_unchanged(tmp_path):
    """Image logging draws its own random numbers: the losses are bit-identical."""
    x = torch.rand(64, 784, generator=generator(1)).round()
    losses = []
    for log_dir in (None, tmp_path):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = small_vae()
        history = pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(x, batch_size=16),
            epochs=2,
            device=here(),
            log=pv.Logging(progress=False, tensorboard=log_dir, images_every=1 if log_dir else 0),
        )
        losses.append(history.loss)
    assert losses[0] == losses[1]


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    vae = small_vae()
    with pytest.raises(ImportError, match=r"pyro_vae\[tensorboard\]"):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(torch.rand(16, 784).round(), batch_size=8),
            epochs=1,
            device=here(),
            log=pv.Logging(progress=False, tensorboard=tmp_path),
        )


def test_8bit_images_are_shown_as_grey_values(tmp_path):
    """A discretized-logistic VAE of 0..255 values: its grids are the values / 255, not
    clamped to [0, 1] (which made most pixels white)."""
    import io

    from PIL import Image

    torch.manual_seed(0)
    x = (torch.rand(16, 784) * 255).round()
    lik = pv.DiscretizedLogisticLikelihood(pv.MLP(2, 784 * 6, (8,)), 784, components=2)

    class Scaled(torch.nn.Module):  # the encoder reads grey values, x / 255
        def __init__(self):
            super().__init__()
            self.net = pv.MLP(784, 4, (8,))

        def forward(self, x):
            return self.net(x / 255)

    vae = pv.VAE(pv.StandardNormalPrior(2), lik, pv.GaussianEncoder(Scaled(), 2))
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), epochs=1, device=here(),
           log=pv.Logging(progress=False, tensorboard=tmp_path, images_every=1))  # fmt: skip
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    png = events.Images("images/reconstructions")[0].encoded_image_string
    pixels = torch.tensor(list(Image.open(io.BytesIO(png)).convert("L").getdata())).float()
    assert (pixels >= 250).float().mean() < 0.5  # (uniform grey values: ~2 % near white)


def test_a_model_without_pictures_says_so_once(tmp_path):
    x, c = torch.rand(32, 784).round(), torch.rand(32, 3)
    cvae = pv.ConditionalVAE(pv.GaussianEncoder(pv.MLP(3, 4), 2),
                             pv.BernoulliLikelihood(pv.MLP(2 + 3, 784), 784),
                             pv.GaussianEncoder(pv.MLP(784 + 3, 4), 2))  # fmt: skip
    with pytest.warns(UserWarning, match=r"no TensorBoard images .*need the fields \(c\)") as got:
        pv.fit(cvae.model, cvae.guide, pv.Batches(x, c=c, batch_size=16), epochs=2, device=here(),
               log=pv.Logging(progress=False, tensorboard=tmp_path, images_every=1))  # fmt: skip
    assert len([w for w in got if "TensorBoard images" in str(w.message)]) == 1


@SHUFFLING_LOADER
def test_reconstructions_read_the_latents_of_their_own_points(tmp_path, monkeypatch):
    """A shuffled DataLoader and a per-datapoint guide: the grid's points are the loader's
    first batch, and the guide is asked for those points' latents (their indices), not for
    points 0..7."""
    torch.manual_seed(0)
    x = torch.rand(32, 784).round()
    vae = bernoulli_vae(784, guide=pv.PerDatapointGaussian(32, 2))
    asked = []
    real = pv.VAE.reconstruct

    def reconstruct(self, points, idx=None):
        asked.append((points.clone(), idx.clone()))
        return real(self, points, idx)

    monkeypatch.setattr(pv.VAE, "reconstruct", reconstruct)
    loader = torch.utils.data.DataLoader(pv.Indexed(x), batch_size=8, shuffle=True)
    pv.fit(vae.model, vae.guide, loader, epochs=1, device=here(),
           optim=pv.LazyAdam({"lr": 1e-3}),
           log=pv.Logging(progress=False, tensorboard=tmp_path, images_every=1))  # fmt: skip
    points, idx = asked[-1]
    assert torch.equal(points, x[idx])
