"""A convolutional VAE on MNIST (DCGAN-style encoder and decoder, with BatchNorm).

Encoder: three stride-2 convolutions 1→16→32→64 (kernel 4; BatchNorm + LeakyReLU(0.2) between,
none after the last) and a linear map to μ and log σ of 32 latents. Decoder: transposed
convolutions 32→256→128→64→1 with BatchNorm + ReLU, producing 28×28 logits. Grey-value MNIST
with a Bernoulli likelihood (summed binary cross-entropy; the KL is estimated by Trace_ELBO),
Adam lr 2e-3, batch 1024, 10 epochs. ``vae.eval()`` switches BatchNorm to its running
statistics for evaluation and pictures. The model is ``pyro_vae.models.zoo.conv_vae``.

    python examples/mnist_conv.py --epochs 10 --out runs/mnist_conv

Writes metrics.json, history.json, reconstructions.png (true and reconstructed rows),
samples.png and loss.png to --out.
"""

from __future__ import annotations

import argparse

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(
        __doc__,
        epochs=2,
        batch_size=1024,
        out="runs/mnist_conv",
        full="10",
        lr=2e-3,
        default_particles="1000 on cuda, 5 on cpu",
    )
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--likelihood", choices=zoo.LIKELIHOODS, default="bernoulli")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    x_train, _, x_test, _ = scripts.mnist_tensors(args, device, flatten=False)
    train = pv.Batches(x_train, batch_size=args.batch_size)
    test = pv.Batches(x_test, batch_size=500, shuffle=False)
    vae = zoo.conv_vae(likelihood=args.likelihood, latent_dim=args.latent_dim)
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        optim=pv.LazyAdam({"lr": args.lr}),
        loss=pv.BetaELBO(args.beta),
        **scripts.run_options(args, out, device),
    )
    vae.eval()  # BatchNorm: running statistics from here on
    result = scripts.score_test_set(
        vae.model,
        vae.guide,
        test,
        device,
        args.num_particles,
        default_particles=(1000, 5),
        max_rows=(2**16, 2**13),
    )
    x = test.data[:64]
    pics = scripts.pictures(out)  # rank 0 writes to --out
    images = [
        pv.save_reconstructions(x, vae.reconstruct(x), pics / "reconstructions.png"),
        pv.save_grid(vae.sample(64), pics / "samples.png"),
        pv.plot_curves(
            {"train": (history.epoch, history.loss)},
            pics / "loss.png",
            ylabel="negative ELBO per image (nats)",
        ),
    ]
    metrics = {
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1],
        "test_elbo": result.elbo,
        "test_log_likelihood": result.log_likelihood,
        "num_particles": result.num_particles,
        "device": pv.device_name(device),
        "seconds": history.seconds[-1],
        "images": images,
        "likelihood": args.likelihood,
        "beta": args.beta,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
