"""Variational EM vs amortized inference on a noisy circle (a VAE with a 1-D latent).

Data: z_n ~ N(0, 1), x_n = (cos z_n, sin z_n) + 0.1 ε_n, N = 20000 (seed 0), the first 75% for
training. Decoder 1→20→20→2 (ReLU), Gaussian likelihood with σ = 0.1, standard normal prior;
for amortized inference an encoder 2→20→20→(μ, log σ). Adam lr 3e-4, batch 1000, 500 epochs
for the full run (the setup of Linderman's Stanford STATS 305C lecture notes "Variational
Autoencoders", 2023, which report an ELBO of −0.77 on the training and −0.93 on the test points
for the amortized VAE after 500 epochs). The model is ``pyro_vae.models.zoo.circle_vae``.
``--inference`` switches the guide, and nothing else:

* ``amortized``: q(z|x) from the encoder;
* ``per-datapoint``: variational EM, local (μ_n, log σ_n) for each point (no encoder); held-out
  points get their own E-step with the decoder frozen;
* ``semi-amortized``: the encoder's output refined by gradient steps (Kim et al. 2018).

    python examples/circle.py --inference per-datapoint --epochs 500 --out runs/circle_per_datapoint

Writes metrics.json, history.json, elbo_curves.png, samples.png and posterior_means.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(
        __doc__,
        epochs=50,
        batch_size=1000,
        out="runs/circle",
        full="500",
        lr=3e-4,
        default_particles=1000,
        mnist=False,
    )
    p.add_argument("--inference", choices=zoo.INFERENCE, default="amortized")
    p.add_argument(
        "--local-lr",
        type=float,
        default=0.1,
        help="Adam step size of per-datapoint parameters (and held-out E-steps)",
    )
    p.add_argument(
        "--e-steps",
        type=int,
        default=0,
        help="per-datapoint: 0 = joint updates, k = variational EM with k E-steps a batch",
    )
    p.add_argument("--init-scale", type=float, default=0.1, help="per-datapoint: initial σ_n")
    p.add_argument("--refine-steps", type=int, default=5, help="semi-amortized: K")
    p.add_argument("--refine-lr", type=float, default=1e-3, help="semi-amortized: step size")
    p.add_argument(
        "--test-epochs",
        type=int,
        default=200,
        help="per-datapoint: E-step epochs on held-out points",
    )
    p.add_argument("--eval-every", type=int, default=25, help="epochs between test evaluations")
    p.add_argument("--num-data", type=int, default=20000)
    return p.parse_args(argv)


class TestCurve:
    """The test ELBO during training. The amortized guides read held-out points directly: fit's
    validation option evaluates them. Per-datapoint inference keeps a guide for the held-out
    points whose E-steps (decoder frozen) run in fit's callback, as many per training epoch as
    a training point gets, then ``--test-epochs`` more at the end (:meth:`finish`)."""

    def __init__(self, vae: pv.VAE, test: pv.Batches, args: argparse.Namespace) -> None:
        self.vae, self.test, self.args = vae, test, args
        self.local = args.inference == "per-datapoint"
        self.held_out = vae
        self.epochs: list[int] = []
        self.elbo: list[float] = []
        if self.local:
            guide = pv.PerDatapointGaussian(test.num_data, 1, init_scale=args.init_scale)
            self.held_out = vae.with_guide(guide.to(test.device), name="test")

    def validation(self) -> pv.Validation | None:
        """``fit``'s validation (amortized; per-datapoint: ``None``, the callback scores)."""
        if self.local:
            return None
        return pv.Validation(
            self.test, every=self.args.eval_every, num_particles=self.args.num_particles
        )

    def evaluate(self, e_epochs: int) -> pv.Evaluation:
        """The held-out ELBO after ``e_epochs`` more E-step epochs (per-datapoint)."""
        e_epochs *= max(1, self.args.e_steps)  # as many E-steps as a training point got
        model, guide = self.held_out.model, self.held_out.guide
        if self.local and e_epochs:
            self.held_out = pv.infer_local(self.vae, self.test, epochs=e_epochs,
                                           lr=self.args.local_lr, local=self.held_out)  # fmt: skip
            model, guide = self.held_out.model, self.held_out.guide
        return pv.evaluate(model, guide, self.test, num_particles=self.args.num_particles)

    def __call__(self, epoch: int, history: pv.History) -> None:
        if epoch % self.args.eval_every == 0 or epoch == self.args.epochs:
            self.vae.eval()
            e_epochs = epoch - (self.epochs[-1] if self.epochs else 0)
            self.epochs.append(epoch)
            self.elbo.append(self.evaluate(e_epochs).elbo)
            self.vae.train()

    def finish(self, history: pv.History) -> pv.Evaluation:
        """The final test evaluation (per-datapoint: after more E-steps, from where they are,
        with the step size annealed to 1%)."""
        if not self.local:
            self.epochs, self.elbo = history.val_epoch, history.val_elbo
        else:
            self.held_out = pv.infer_local(
                self.vae,
                self.test,
                epochs=self.args.test_epochs,
                lr=self.args.local_lr,
                init=self.held_out.variational,
                name="test_final",
                final_lr_ratio=0.01,
            )
        return self.evaluate(0)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    x, _ = pv.make_circle(args.num_data, seed=0)
    n_train = int(0.75 * args.num_data)
    x = x.to(device)
    train = pv.Batches(x[:n_train], batch_size=args.batch_size)
    test = pv.Batches(x[n_train:], batch_size=args.batch_size, shuffle=False)
    vae = zoo.circle_vae(
        args.inference,
        num_data=n_train,
        refine_steps=args.refine_steps,
        refine_lr=args.refine_lr,
        init_scale=args.init_scale,
    )
    local = args.inference == "per-datapoint"
    curve = TestCurve(vae, test, args)
    t0 = time.perf_counter()
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        optim=pv.LazyAdam({"lr": args.lr}, local_lr=args.local_lr),
        **scripts.run_options(args, out, device, callback=curve if local else None),
        e_steps=args.e_steps if local else 0,
        validation=curve.validation(),
    )
    seconds = time.perf_counter() - t0
    vae.eval()
    train_eval = pv.evaluate(vae.model, vae.guide, train, num_particles=args.num_particles)
    test_result = curve.finish(history)
    images = _pictures(vae, history, (curve.epochs, curve.elbo), train, scripts.pictures(out), args)
    gap = None
    if not local:  # how far the encoder is from the per-datapoint optimum, on the test set
        gap = pv.amortization_gap(
            vae, test, epochs=args.test_epochs, lr=args.local_lr, num_particles=args.num_particles
        )
    metrics = {
        "inference": args.inference,
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1],
        "train_elbo": train_eval.elbo,
        "test_elbo": test_result.elbo,
        "test_log_likelihood": test_result.log_likelihood,
        "train_log_likelihood": train_eval.log_likelihood,
        "num_particles": args.num_particles,
        "device": pv.device_name(device),
        "seconds": seconds,
        "images": images,
        "e_steps": args.e_steps if local else 0,
        "lr": args.lr,
        "local_lr": args.local_lr if local else None,
        "refine_steps": args.refine_steps if args.inference == "semi-amortized" else 0,
        "test_extra_e_epochs": args.test_epochs if local else 0,
        "init_scale": args.init_scale if local else None,
        "test_curve": {"epoch": curve.epochs, "elbo": curve.elbo},
        "test_amortization_gap": None if gap is None else dataclasses.asdict(gap),
    }
    return scripts.save_metrics(out, metrics, hide=("test_curve",))


def _pictures(
    vae: pv.VAE,
    history: pv.History,
    curve: tuple[list[int], list[float]],
    train: pv.Batches,
    pics: pathlib.Path,
    args: argparse.Namespace,
) -> list[str]:
    """The ELBO curves, samples of the model and the training points coloured by E_q[z]."""
    curve_epochs, curve_test = curve
    images = [
        pv.plot_curves(
            {
                "train (running mean of the epoch)": (history.epoch, [-v for v in history.loss]),
                "test": (curve_epochs, curve_test),
            },
            pics / "elbo_curves.png",
            title=f"circle VAE, {args.inference} inference",
        )
    ]
    z = vae.prior()(torch.Size((5000,)))
    samples = vae.likelihood(z).sample()
    title = "samples x ~ p(x|z) p(z), coloured by z"
    images.append(pv.plot_scatter(samples, z, pics / "samples.png", colorbar="z", title=title))
    shown = min(5000, train.num_data)
    x_shown, idx = train.data[:shown], torch.arange(shown, device=train.device)
    q_mean = vae.variational(x_shown, idx).mean
    title = "training data coloured by E_q[z]"
    images.append(
        pv.plot_scatter(
            x_shown, q_mean, pics / "posterior_means.png", colorbar="E_q[z]", title=title
        )
    )
    return images


if __name__ == "__main__":
    scripts.command(main, parse_args)
