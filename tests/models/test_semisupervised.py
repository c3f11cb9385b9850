"""SemiSupervisedVAE (M2): the enumerated bound of a mixed minibatch against a hand
computation, training through fit to a working classifier, and what it refuses."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SHUFFLING_LOADER, generator, here
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae as pv

D, F, K = 2, 3, 3


class DeltaEncoder(nn.Module):
    """A point-mass guide q(z | x, y) = δ(z - W [x, y] - b): its draws are its means and its
    log-density 0, so the bound is exact, not an estimate."""

    latent_dim = D

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(F + K, D)

    def forward(self, inputs, idx=None):
        return dist.Delta(self.net(inputs)).to_event(1)


def tiny_m2(alpha: float) -> pv.SemiSupervisedVAE:
    """Linear networks in float64, a point-mass guide for z."""
    torch.manual_seed(0)
    m2 = pv.SemiSupervisedVAE(
        nn.Linear(F, K),
        pv.GaussianLikelihood(nn.Linear(D + K, F), F, scale=0.8),
        DeltaEncoder(),
        num_classes=K,
        alpha=alpha,
    )
    return m2.double()


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_the_enumerated_bound_of_a_mixed_minibatch_is_the_hand_computed_one(alpha):
    """Labelled points: log p(y) + log p(z) + log p(x | z, y) - log q(z | x, y) (+ α log q(y | x));
    unlabelled: the same summed over y under q(y | x), minus log q(y | x): fit's loss with
    TraceEnum_ELBO (one full batch, a step of size 0) equals it to 1e-9."""
    m2 = tiny_m2(alpha)
    g = generator(1)
    x = torch.randn(6, F, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 0, 1, 2])
    known = torch.tensor([True, False, True, False, False, True])
    data = pv.Batches(x, y=y, y_mask=known, batch_size=6, shuffle=False)
    history = pv.fit(
        m2.model,
        m2.guide,
        data,
        epochs=1,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        optim=pyro.optim.SGD({"lr": 0.0}),
        device=here(),
        log=False,
    )
    with torch.no_grad():
        log_q_y = m2.classifier(x).log_softmax(-1)  # (6, K)
        elbo = 0.0
        for n in range(6):
            terms = []
            for label in range(K):
                onehot = nn.functional.one_hot(torch.tensor(label), K).double()
                z = m2.variational.net(torch.cat([x[n], onehot])[None])  # the guide's draw
                p_x = m2.likelihood(torch.cat([z, onehot[None]], -1))
                prior = dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1)
                value = -math.log(K) + prior.log_prob(z) + p_x.log_prob(x[n])  # (log q(z) = 0)
                terms.append(value.squeeze())
            if known[n]:
                elbo += terms[y[n]] + alpha * log_q_y[n, y[n]]
            else:
                q = log_q_y[n].exp()
                elbo += sum(q[k] * (terms[k] - log_q_y[n, k]) for k in range(K))
    assert history.loss[0] == pytest.approx(-elbo.item() / 6, rel=1e-9)


def test_m2_learns_a_classifier_from_a_few_labels():
    """Two separated classes in 4 dimensions, 10 % of the labels known: after a few epochs
    q(y | x) classifies held-out points (label switching is ruled out by the known labels)."""
    g = generator(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    x = (torch.randn(n, 4, generator=g) + 3.0 * (2 * y[:, None] - 1)).sigmoid()
    known = torch.rand(n, generator=g) < 0.1
    torch.manual_seed(0)
    m2 = pv.SemiSupervisedVAE(
        pv.MLP(4, 2, (16,)),
        pv.BernoulliLikelihood(pv.MLP(2 + 2, 4, (16,)), 4),
        pv.GaussianEncoder(pv.MLP(4 + 2, 2 * 2, (16,)), 2),
        num_classes=2,
        alpha=0.1 * n,
    )
    history = pv.fit(
        m2.model,
        m2.guide,
        pv.Batches(x, y=y, y_mask=known, batch_size=50),
        epochs=20,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        device=here(),
        optim=pv.LazyAdam({"lr": 1e-2}),
        log=False,
    )
    assert all(map(math.isfinite, history.loss))
    y_test = torch.randint(0, 2, (200,), generator=g)
    x_test = (torch.randn(200, 4, generator=g) + 3.0 * (2 * y_test[:, None] - 1)).sigmoid()
    accuracy = (m2.classify(x_test) == y_test).double().mean().item()
    assert accuracy > 0.95, accuracy
    assert m2.sample(torch.tensor([0, 1])).shape == (2, 4)
    result = pv.evaluate(m2.model, m2.guide, pv.Batches(x, y=y, y_mask=known, batch_size=100),
                         num_particles=10)  # fmt: skip
    assert math.isfinite(result.log_likelihood)


def test_m2_refuses_local_inference_with_the_reason():
    m2 = tiny_m2(0.0)
    with pytest.raises(NotImplementedError, match=r"q\(z \| x, y\) reads the label"):
        m2.with_guide(pv.PerDatapointGaussian(6, D), name="local")


@SHUFFLING_LOADER
def test_m2_trains_from_a_dataloader_and_resumes_exactly(tmp_path):
    """Through a shuffled DataLoader over a labelled dataset (``Indexed(..., fields=("y",
    "y_mask"))``), with TraceEnum_ELBO: 1 epoch, then resumed to 3, gives the losses of 3
    epochs straight (other initial weights before the resume: all restored)."""
    g = generator(0)
    x, y = torch.rand(60, 4, generator=g).round(), torch.randint(0, 2, (60,), generator=g)
    known = torch.rand(60, generator=g) < 0.3
    dataset = pv.Indexed(TensorDataset(x, y, known), fields=("y", "y_mask"))

    def run(epochs, resume, seed):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        m2 = pv.SemiSupervisedVAE(
            pv.MLP(4, 2, (8,)),
            pv.BernoulliLikelihood(pv.MLP(2 + 2, 4, (8,)), 4),
            pv.GaussianEncoder(pv.MLP(4 + 2, 2 * 2, (8,)), 2),
            num_classes=2,
            alpha=1.0,
        )
        pyro.set_rng_seed(0)
        loader = DataLoader(dataset, batch_size=20, shuffle=True)
        folder = pv.Checkpoints(tmp_path / "run", resume=resume, overwrite=not resume)
        return pv.fit(m2.model, m2.guide, loader, epochs=epochs, device=here(), log=False,
                      loss=TraceEnum_ELBO(max_plate_nesting=1), save=folder).loss  # fmt: skip

    straight = run(3, resume=False, seed=0)
    run(1, resume=False, seed=0)
    assert run(3, resume=True, seed=7) == straight


def test_m2_local_inference_is_refused_before_any_work():
    """amortization_gap on M2 says why at once (no evaluation first, no shape error)."""
    m2 = pv.SemiSupervisedVAE(pv.MLP(6, 3), pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                              pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), num_classes=3)  # fmt: skip
    x = torch.rand(8, 6).round()
    data = pv.Batches(x, y=torch.zeros(8, dtype=torch.long), y_mask=torch.ones(8, dtype=bool),
                      batch_size=8)  # fmt: skip
    for call in (pv.amortization_gap, pv.infer_local):
        with pytest.raises(NotImplementedError, match=r"q\(z \| x, y\) reads the label"):
            call(m2, data, epochs=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda y, m: (y, m.long()), r"'y_mask' must hold booleans.*y_mask.bool\(\)"),
        (lambda y, m: (y.float(), m), r"'y' must hold integer class indices.*y.long\(\)"),
        (lambda y, m: (torch.where(m, 3, y), m), r"'y' has known labels outside 0..2"),
    ],
    ids=["integer-mask", "float-labels", "label-too-large"],
)
def test_m2_labels_that_cannot_be_read_are_named(change, message):
    m2 = pv.SemiSupervisedVAE(pv.MLP(6, 3), pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                              pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), num_classes=3)  # fmt: skip
    x, y, known = torch.rand(8, 6).round(), torch.randint(0, 3, (8,)), torch.arange(8) < 4
    y, known = change(y, known)
    with pytest.raises(ValueError, match=message):
        pv.fit(m2.model, m2.guide, pv.Batches(x, y=y, y_mask=known, batch_size=8), epochs=1,
               loss=TraceEnum_ELBO(max_plate_nesting=1), device=here(), log=False)  # fmt: skip


def test_m2_takes_minus_one_for_an_unknown_label():
    m2 = pv.SemiSupervisedVAE(pv.MLP(6, 3), pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                              pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), num_classes=3)  # fmt: skip
    x, known = torch.rand(8, 6).round(), torch.arange(8) < 4
    y = torch.where(known, torch.randint(0, 3, (8,)), -1)
    history = pv.fit(m2.model, m2.guide, pv.Batches(x, y=y, y_mask=known, batch_size=8),
                     epochs=1, loss=TraceEnum_ELBO(max_plate_nesting=1), device=here(),
                     log=False)  # fmt: skip
    assert math.isfinite(history.loss[0])


def test_a_classifier_of_the_wrong_width_is_refused():
    m2 = pv.SemiSupervisedVAE(pv.MLP(6, 2), pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                              pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), num_classes=3)  # fmt: skip
    x, y, known = torch.rand(8, 6).round(), torch.randint(0, 3, (8,)), torch.arange(8) < 4
    with pytest.raises(ValueError, match=r"gives 2 logits per point but num_classes=3"):
        pv.fit(m2.model, m2.guide, pv.Batches(x, y=y, y_mask=known, batch_size=8), epochs=1,
               loss=TraceEnum_ELBO(max_plate_nesting=1), device=here(), log=False)  # fmt: skip
