"""The training loop: it lowers the loss, trains hand-written Pyro programs, and resumes."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import HandWritten, bernoulli_vae, circle_vae, generator, here

import pyro_vae as pv


def small_vae(features: int = 784, latent: int = 4, hidden: int = 64) -> pv.VAE:
    prior = pv.MAFPrior(latent, transforms=2, hidden_features=(32, 32))
    return bernoulli_vae(features, latent, hidden, prior=prior)


@pytest.mark.mnist
def test_training_on_mnist_lowers_the_loss(mnist_dir):
    x, _ = pv.load_mnist(mnist_dir, train=True)
    assert x.shape == (60000, 784) and x.min() >= 0 and x.max() <= 1
    train = pv.Batches(x[:2048], batch_size=128, binarize="dynamic")
    held_out = pv.load_mnist(mnist_dir, train=False)[0][:256].round()
    vae = small_vae()
    before = pv.evaluate(vae.model, vae.guide, held_out, num_particles=4).elbo
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=2,
        modules=vae,
        device=here(),
        log=False,
    )
    after = pv.evaluate(vae.model, vae.guide, held_out, num_particles=4).elbo
    assert history.epoch == [1, 2] and len(history.loss) == 2
    assert history.loss[1] < history.loss[0] - 20  # from ~540 nats per image at the start
    assert after > before + 100, (before, after)


def linear_gaussian_data(n: int = 512) -> torch.Tensor:
    g = generator(0)
    w = torch.randn(5, 2, generator=g)
    return torch.randn(n, 2, generator=g) @ w.T + 0.1 * torch.randn(n, 5, generator=g)


def test_hand_written_pyro_program_trains():
    pair = HandWritten(5, 2)
    data = pv.Batches(linear_gaussian_data(), batch_size=64)
    history = pv.fit(
        pair.model,
        pair.guide,
        data,
        epochs=30,
        optim=pyro.optim.Adam({"lr": 0.03}),
        device=here(),
        log=False,
    )
    assert history.loss[-1] < history.loss[0] - 3, history.loss
    assert pyro.param("scale").item() < 0.5  # from 1.0 toward the noise level


def _train(tmp_path, epochs, *, resume=False, init_seed=0):
    """Trains a VAE and a hand-written pair; ``init_seed`` sets their initial weights."""
    data = pv.Batches(linear_gaussian_data(256), batch_size=64)
    pyro.clear_param_store()
    torch.manual_seed(init_seed)
    vae = pv.VAE(
        pv.MAFPrior(2, transforms=2, hidden_features=(8,)),
        pv.GaussianLikelihood(pv.MLP(2, 5, (8,)), 5, learn_scale=True),
        pv.GaussianEncoder(pv.MLP(5, 4, (8,)), 2),
    )
    pyro.set_rng_seed(0)
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=epochs,
        modules=vae,
        device=here(),
        save=pv.Checkpoints(tmp_path / "vae", resume=resume),
        log=False,
    )
    pyro.clear_param_store()
    torch.manual_seed(init_seed)
    pair = HandWritten(5, 2)
    pyro.set_rng_seed(0)
    hand = pv.fit(
        pair.model,
        pair.guide,
        data,
        epochs=epochs,
        device=here(),
        save=pv.Checkpoints(tmp_path / "hand", resume=resume),
        log=False,
    )
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return vae, history, hand, store


def test_checkpoint_resume_is_exact(tmp_path):
    vae_a, hist_a, hand_a, store_a = _train(tmp_path / "a", epochs=3)
    _train(tmp_path / "b", epochs=1)
    # A fresh process would build new objects with other weights; resume must restore all.
    vae_b, hist_b, hand_b, store_b = _train(tmp_path / "b", epochs=3, resume=True, init_seed=7)
    assert hist_b.epoch == [1, 2, 3]
    assert hist_a.loss == hist_b.loss and hand_a.loss == hand_b.loss
    for (name, p), q in zip(vae_a.state_dict().items(), vae_b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert store_a.keys() == store_b.keys()
    for name in store_a:
        torch.testing.assert_close(store_a[name], store_b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "b" / "vae" / "history.json").exists()
    assert pv.History.load(tmp_path / "b" / "vae" / "history.json") == hist_b


def test_fit_without_device_trains_on_the_default_device():
    """The default device is torch's when one is set, else the GPU when there is one, and fit
    without device= (and without modules=) moves the VAE there and trains it there."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    expected = here().type if here().type != "cpu" else expected
    assert pv.default_device().type == expected
    vae = small_vae(features=6, latent=2, hidden=8)
    before = {k: v.detach().cpu().clone() for k, v in vae.named_parameters()}
    data = pv.Batches(torch.rand(64, 6, device="cpu").round(), batch_size=32)  # (fit moves it)
    history = pv.fit(vae.model, vae.guide, data, epochs=2, log=False)
    assert history.epoch == [1, 2]
    devices = {p.device.type for p in vae.parameters()} | {b.device.type for b in vae.buffers()}
    assert devices == {expected}
    for name, p in vae.named_parameters():
        assert not torch.equal(p.detach().cpu(), before[name]), name


def test_beta_scales_the_kl_term_exactly():
    """ELBO_β = E[log p(x|z)] − β KL: with a fixed sample, loss(β) is linear in β."""
    vae = small_vae(features=6, latent=2, hidden=8)
    x = torch.rand(8, 6).round()

    def loss(beta):
        pyro.set_rng_seed(3)
        with pv.LatentScale(beta):
            return pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()

    l0, l1, l2 = loss(0.0), loss(1.0), loss(2.0)
    pyro.set_rng_seed(3)
    plain = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()
    assert l1 == pytest.approx(plain, rel=1e-6)
    assert l2 - l1 == pytest.approx(l1 - l0, rel=1e-4)  # the KL estimate, weighted by β
    assert l0 != pytest.approx(l1)


def test_kl_warm_up_schedule_reaches_the_training_loop():
    seen = []
    vae = small_vae(features=6, latent=2, hidden=8)
    data = pv.Batches(torch.rand(64, 6).round(), batch_size=32)

    def beta(epoch):
        seen.append(epoch)
        return min(1.0, epoch / 3)

    pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=4,
        loss=pv.BetaELBO(beta),
        device=here(),
        log=False,
    )
    assert seen == [1, 2, 3, 4]


def test_fit_takes_a_tensor_as_evaluate_does():
    """A plain tensor is shuffled minibatches of up to 256, as infer_local takes it."""
    vae = bernoulli_vae()
    history = pv.fit(vae.model, vae.guide, torch.rand(300, 6).round(), epochs=1, device=here(),
                     log=False)  # fmt: skip
    assert history.epoch == [1]


def test_each_concept_is_one_argument():
    """fit keeps SVI's arguments first and has at most 12 parameters; each option object
    refuses a contradiction when it is built."""
    import inspect

    names = list(inspect.signature(pv.fit).parameters)
    assert names[:3] == ["model", "guide", "data"] and len(names) <= 12
    assert names.index("optim") < names.index("loss")  # (SVI's order)
    with pytest.raises(ValueError, match="pass one"):
        pv.Checkpoints("runs/x", resume=True, overwrite=True)
    with pytest.raises(ValueError, match="images_every needs tensorboard"):
        pv.Logging(images_every=2)
    with pytest.raises(ValueError, match="precision"):
        pv.Compute(precision="16")


def test_infer_local_continues_the_local_guide_it_returned():
    vae = circle_vae(pv.PerDatapointGaussian(64, 1))
    test = pv.Batches(pv.make_circle(40, seed=3)[0], batch_size=20, shuffle=False)
    first = pv.infer_local(vae, test, epochs=2, lr=5e-2)
    loc = first.variational.loc.detach().clone()
    again = pv.infer_local(vae, test, epochs=2, lr=5e-2, local=first)
    assert again is first and not torch.equal(loc, again.variational.loc)


def test_a_one_shot_loader_is_refused_by_name():
    """An iterable that is read once (its iterator, not a new one per pass) leaves a later
    epoch without batches: an error that says so, not a ZeroDivisionError."""

    class OneShot:
        def __init__(self, items):
            self.items, self.n = iter(items), len(items)

        def __len__(self):
            return self.n

        def __iter__(self):
            return self.items

    vae = bernoulli_vae()
    x = torch.rand(24, 6).round()
    batches = OneShot([(x[i : i + 8], torch.arange(i, i + 8)) for i in (0, 8, 16)])
    with pytest.raises(ValueError, match="no batch in epoch 2: a one-shot iterable"):
        pv.fit(vae.model, vae.guide, pv.Loader(batches, num_data=24), epochs=2, device=here(),
               log=False)  # fmt: skip


def test_a_loss_that_is_not_finite_at_the_initial_weights_is_not_a_step_size_problem():
    def model(x, idx=None, num_data=None):
        log_scale = pyro.param("log_scale", torch.tensor(1000.0))  # exp: inf
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("x", pyro.distributions.Normal(0.0, log_scale.exp()), obs=x)

    def guide(x, idx=None, num_data=None):
        pass

    with pytest.raises(FloatingPointError, match=r"at the initial weights .* no step size"):
        pv.fit(model, guide, pv.Batches(torch.randn(8), batch_size=4), epochs=1, device=here(),
               log=False)  # fmt: skip


@pytest.mark.host_default("torch's default device is per thread: the second thread's is the CPU")
def test_a_second_thread_is_refused_while_a_fit_trains():
    """Pyro's handlers are global to a process: a fit in another thread while one trains is
    refused with the reason (it failed with "duplicate plate"); a fit after it runs."""
    import threading

    started, release, errors = threading.Event(), threading.Event(), []

    def hold(epoch, history):
        started.set()
        release.wait(30)

    def first():
        try:
            vae = bernoulli_vae()
            pv.fit(vae.model, vae.guide, torch.rand(16, 6).round(), epochs=1, device=here(),
                   log=pv.Logging(progress=False, callback=hold))  # fmt: skip
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(30)
    try:
        other = bernoulli_vae()
        with pytest.raises(RuntimeError, match="already training in another thread"):
            pv.fit(other.model, other.guide, torch.rand(16, 6).round(), epochs=1, device=here(),
                   log=False)  # fmt: skip
    finally:
        release.set()
        thread.join(30)
    assert not errors
    again = bernoulli_vae()
    pv.fit(
        again.model,
        again.guide,
        torch.rand(16, 6).round(),
        epochs=1,
        device=here(),
        log=False,
    )


def test_a_plate_that_ignores_num_data_is_told():
    """A minibatch scored unscaled: the loss fit reports would be the batch's / N (1.05 where
    the data set's mean was 4.16 in the issue); fit says how to write the plate."""

    def model(x, idx=None, num_data=None):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):  # (num_data ignored)
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0), obs=x)

    def guide(x, idx=None, num_data=None):
        pass

    with pytest.warns(UserWarning, match=r"minibatch of 4 of the 16 points without scaling"):
        pv.fit(model, guide, pv.Batches(torch.randn(16), batch_size=4), epochs=1, device=here(),
               log=False)  # fmt: skip
