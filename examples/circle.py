"""Variational EM vs amortized inference on a noisy circle (a VAE with a 1-D latent).

Data: z_n ~ N(0, 1), x_n = (cos z_n, sin z_n) + 0.1 ε_n, N = 20000 (seed 0), the first 75% for
training. Decoder 1→20→20→2 (ReLU), Gaussian likelihood with σ = 0.1, standard normal prior;
for amortized inference an encoder 2→20→20→(μ, log σ). Adam lr 3e-4, batch 1000, 500 epochs
for the full run (the setup of Linderman's Stanford STATS 305C lecture notes "Variational
Autoencoders", 2023, which report an ELBO of −0.77 on the training and −0.93 on the test points
for the amortized VAE after 500 epochs). The model is ``pyro_vae.zoo.circle_vae``.
``--inference`` switches the guide, and nothing else:

* ``amortized``: q(z|x) from the encoder;
* ``per-point``: variational EM, local (μ_n, log σ_n) for each point (no encoder); held-out
  points get their own E-step with the decoder frozen;
* ``semi-amortized``: the encoder's output refined by gradient steps (Kim et al. 2018).

    python examples/circle.py --inference per-point --epochs 500 --out runs/circle_per_point

Writes metrics.json, history.json, elbo_curves.png, samples.png and posterior_means.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import pyro_vae as pv
from pyro_vae import scripts, zoo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(__doc__, epochs=50, batch_size=1000, out="runs/circle", full="500")
    p.add_argument("--inference", choices=zoo.INFERENCE, default="amortized")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam step size of the networks")
    p.add_argument(
        "--local-lr",
        type=float,
        default=0.1,
        help="Adam step size of per-point parameters (and held-out E-steps)",
    )
    p.add_argument(
        "--e-steps",
        type=int,
        default=0,
        help="per-point: 0 = joint updates, k = variational EM with k E-steps a batch",
    )
    p.add_argument("--init-scale", type=float, default=0.1, help="per-point: initial σ_n")
    p.add_argument("--refine-steps", type=int, default=5, help="semi-amortized: K")
    p.add_argument("--refine-lr", type=float, default=1e-3, help="semi-amortized: step size")
    p.add_argument(
        "--test-epochs", type=int, default=200, help="per-point: E-step epochs on held-out points"
    )
    p.add_argument("--eval-every", type=int, default=25, help="epochs between test evaluations")
    p.add_argument("--num-data", type=int, default=20000)
    p.add_argument("--num-particles", type=int, default=1000)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)

    x, z_true = pv.make_circle(args.num_data, seed=0)
    n_train = int(0.75 * args.num_data)
    x, z_true = x.to(device), z_true.to(device)
    train = pv.Batches(x[:n_train], batch_size=args.batch_size)
    test = pv.Batches(x[n_train:], batch_size=args.batch_size, shuffle=False)
    vae = zoo.circle_vae(
        args.inference,
        num_data=n_train,
        refine_steps=args.refine_steps,
        refine_lr=args.refine_lr,
        init_scale=args.init_scale,
    )
    per_point = args.inference == "per-point"
    optim = pv.LazyAdam({"lr": args.lr}, local_lr=args.local_lr)

    # The test curve. The amortized guides read held-out points directly: fit's validation
    # option evaluates them. Per-point inference keeps a guide for them whose E-steps (decoder
    # frozen) run in a callback alongside training, as many per training epoch as a training
    # point gets, then --test-epochs more at the end.
    held_out, callback, validation = vae, None, {}
    curve_epochs, curve_test = [], []

    def test_eval(e_epochs: int) -> pv.Evaluation:
        e_epochs *= max(1, args.e_steps)  # as many E-steps as a training point got
        if per_point and e_epochs:
            pv.fit(
                held_out.model,
                held_out.guide,
                test,
                epochs=e_epochs,
                freeze_model=True,
                optim=pv.LazyAdam({"lr": args.local_lr}),
                device=device,
                progress=False,
            )
        return pv.evaluate(held_out.model, held_out.guide, test, num_particles=args.num_particles)

    if per_point:
        test_guide = pv.PerDatapointGaussian(test.num_data, 1, init_scale=args.init_scale)
        held_out = vae.with_guide(test_guide.to(device), name="test")

        def callback(epoch: int, history: pv.History) -> None:
            if epoch % args.eval_every == 0 or epoch == args.epochs:
                vae.eval()
                e_epochs = epoch - (curve_epochs[-1] if curve_epochs else 0)
                curve_epochs.append(epoch)
                curve_test.append(test_eval(e_epochs).elbo)
                vae.train()

    else:
        validation = {
            "validation": test,
            "validate_every": args.eval_every,
            "validation_particles": args.num_particles,
        }

    t0 = time.perf_counter()
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        optim=optim,
        device=device,
        **scripts.run_options(args, out),
        callback=callback,
        e_steps=args.e_steps if per_point else 0,
        **validation,
    )
    seconds = time.perf_counter() - t0
    if not per_point:
        curve_epochs, curve_test = history.val_epoch, history.val_elbo

    vae.eval()
    train_eval = pv.evaluate(vae.model, vae.guide, train, num_particles=args.num_particles)
    if per_point:  # more E-steps, from where they are, with the step size annealed to 1%
        held_out = pv.infer_local(
            vae,
            test,
            epochs=args.test_epochs,
            lr=args.local_lr,
            init=held_out.variational,
            name="test_final",
            final_lr_ratio=0.01,
        )
    test_result = test_eval(0)
    pics = scripts.pictures(out)  # rank 0 writes to --out
    images = [
        pv.plot_curves(
            {
                "train (running mean of the epoch)": (history.epoch, [-v for v in history.loss]),
                "test": (curve_epochs, curve_test),
            },
            pics / "elbo_curves.png",
            title=f"circle VAE, {args.inference} inference",
            ylim=(min(min(curve_test), -history.loss[-1]) - 2.0, None),
        )
    ]
    z = vae.prior()(torch.Size((5000,)))
    samples = vae.likelihood(z).sample()
    title = "samples x ~ p(x|z) p(z), coloured by z"
    images.append(pv.plot_scatter(samples, z, pics / "samples.png", colorbar="z", title=title))
    shown = min(5000, train.num_data)
    x_shown, idx = train.data[:shown], torch.arange(shown, device=device)
    q_mean = vae.variational(x_shown, idx).mean
    title = "training data coloured by E_q[z]"
    images.append(
        pv.plot_scatter(
            x_shown, q_mean, pics / "posterior_means.png", colorbar="E_q[z]", title=title
        )
    )
    gap = None
    if not per_point:  # how far the encoder is from the per-point optimum, on the test set
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
        "e_steps": args.e_steps if per_point else 0,
        "lr": args.lr,
        "local_lr": args.local_lr if per_point else None,
        "refine_steps": args.refine_steps if args.inference == "semi-amortized" else 0,
        "test_extra_e_epochs": args.test_epochs if per_point else 0,
        "init_scale": args.init_scale if per_point else None,
        "test_curve": {"epoch": curve_epochs, "elbo": curve_test},
        "test_amortization_gap": None if gap is None else dataclasses.asdict(gap),
    }
    return scripts.save_metrics(out, metrics, hide=("test_curve",))


if __name__ == "__main__":
    main(parse_args())
