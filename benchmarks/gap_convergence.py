"""Does ``pv.amortization_gap`` converge? The gap split of a trained run for several numbers of
E-step epochs.

Loads the checkpoint of an ``examples/mnist_iwae.py`` run (its metrics.json says which model)
and splits the inference gap on the first ``--points`` test images with ``--epochs`` E-step
epochs each, K = ``--num-particles``; prints one JSON line per setting.

    python benchmarks/gap_convergence.py runs/quality_iwae/tanh_vae --epochs 100 300 1000 3000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="an mnist_iwae.py output folder")
    p.add_argument("--epochs", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--num-particles", type=int, default=1000)
    p.add_argument("--data-dir", default=pv.default_data_dir())
    args = p.parse_args(argv)
    run = json.loads((args.run / "metrics.json").read_text())
    activation = _common.ACTIVATIONS[run.get("activation", "tanh")]
    _, test = _common.binarized_mnist(args.data_dir, torch.device("cpu"), test_points=args.points)
    rows = []
    for epochs in args.epochs:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with torch.device("cpu"):  # (where its data are, whatever torch's default device)
            vae = zoo.iwae_vae(
                layers=run["layers"],
                prior=run["prior"],
                num_pseudo=run["num_pseudo"] or 500,
                activation=activation,
            )
        pv.load_checkpoint(args.run / "checkpoint.pt", vae)
        vae.eval()
        points = pv.Batches(test.data, batch_size=100, shuffle=False)
        start = time.perf_counter()
        gap = pv.amortization_gap(vae, points, epochs=epochs, num_particles=args.num_particles)
        row = {"epochs": epochs, **gap.__dict__, "seconds": time.perf_counter() - start}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
