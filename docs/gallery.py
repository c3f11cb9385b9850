"""The gallery: one page per example script, with its explanation, command, figures and metrics.

Each page shows one run of its example and says which: the command that made it (its epochs,
data size and widths), beside the command of the full run whose figures are in the Results.
A small run's figures are never shown as the full run's.

* Executed at build time (needs no data set): ``circle`` and ``counts`` (``bash .ci/docs``
  runs them).
* Recorded: the MNIST examples, run with small settings by ``python -m docs.gallery --record``
  on a machine with MNIST; their PNGs and ``metrics.json`` are committed under
  ``docs/gallery/outputs/<example>/`` (the build machine may have no MNIST).

    python -m docs.gallery            # the pages (runs the executed examples first)
    python -m docs.gallery --record   # re-record the MNIST examples' small runs (needs MNIST)
    python -m docs.gallery --record mnist_cvae   # one of them
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"

# example: (settings of the run shown, full run's flags, executed at build time)
EXAMPLES: dict[str, tuple[str, str, bool]] = {
    "circle": (
        "--inference amortized --epochs 30 --batch-size 100 --num-data 4000 --eval-every 10 "
        "--test-epochs 20 "
        "--num-particles 100",
        "--inference amortized --epochs 500",
        True,
    ),
    "counts": ("--epochs 30 --num-particles 100", "--epochs 100", True),
    "mnist_latent2d": (
        "--epochs 50 --num-particles 100",
        "--epochs 50",
        False,
    ),
    "mnist_flow_prior": (
        "--epochs 64 --num-particles 1000",
        "--epochs 64 --num-particles 1000",
        False,
    ),
    "mnist_flow_posterior": (
        "--posterior planar --flows 16 --epochs 10 --num-particles 100",
        "--posterior planar --flows 16 --epochs 100",
        False,
    ),
    "mnist_conv": ("--epochs 10 --num-particles 100", "--epochs 10", False),
    "mnist_iwae": (
        "--iw 5 --epochs 20 --num-particles 100 --test-points 1000",
        "--iw 5 --epochs 3280",
        False,
    ),
    "mnist_8bit": ("--epochs 5 --num-particles 100", "--epochs 20", False),
    "mnist_cvae": (  # (recorded by hand: one thread beside other jobs; see its run.json)
        "--epochs 100 --lr-decay 0.5",
        "--epochs 100 --lr-decay 0.5",
        False,
    ),
    "mnist_ssvae": (  # (recorded by hand: one thread beside other jobs; see its run.json)
        "--labels 600 --epochs 50 --alpha 46",
        "--labels 100 600 1000 --epochs 50 --alpha 46",
        False,
    ),
}


NOT_MEASURED = ("counts", "mnist_8bit")  # examples whose full run is not in the results yet

CAPTIONS = {  # a figure's caption, by file name (the number in a name: its setting)
    "samples": "Samples: the means of p(x | z) at z ~ p(z), from the trained model.",
    "reconstructions": "Reconstructions: data points (rows 1, 3, ...) and the means of "
    "p(x | z) at z ~ q(z | x) (rows 2, 4, ...).",
    "loss": "Training curve: the loss (negative ELBO per point, nats) by epoch.",
    "elbo_curves": "ELBO per point by epoch, on the training points (the running mean of each "
    "epoch) and on the held-out points.",
    "latent_by_type": "Test cells' posterior means (the first two latent axes), coloured by "
    "cell type.",
    "latent_by_batch": "The same cells coloured by sequencing batch: the batch effect the "
    "VAE was not told about.",
    "latent": "The test points' posterior means E_q[z | x] in the 2-D latent space, coloured "
    "by digit.",
    "latent_cdf": "The same points through the standard normal CDF (the prior's quantiles).",
    "manifold": "The decoded manifold: the means of p(x | z) on a grid of the prior's quantiles.",
    "posterior_means": "Training points coloured by their posterior mean E_q[z | x].",
    "samples_8bit": "Samples of the 8-bit model: the mixture's means at z ~ p(z), over 255.",
    "samples_binary": "Samples of the binarized-MNIST model with the same widths.",
    "reconstructions_8bit": "Reconstructions of the 8-bit model: test digits (rows 1, 3, ...) "
    "and the mixture's means at z ~ q(z | x) (rows 2, 4, ...).",
    "completions": "Completions: the known quadrants of test digits in, the rest drawn from "
    "the model (the number: known quadrants).",
}


def caption(file: str) -> str:
    """The caption of the figure ``file`` (its name without digits, looked up)."""
    stem = Path(file).stem
    key = stem.rstrip("0123456789")
    text = CAPTIONS.get(key, stem.replace("_", " ").capitalize() + ".")
    if key != stem and key != "completions":
        text += f" (setting {stem[len(key) :]})"
    return text


def body_markdown(body: str) -> str:
    """An example's docstring as Markdown: its indented command lines as a bash block."""
    lines, out, block = body.strip().splitlines(), [], []
    for line in [*lines, ""]:
        if line.startswith("    ") and line.strip().startswith(("python ", "torchrun ")):
            block.append(line.strip())
            continue
        if block:
            out += ["```bash", *block, "```"]
            block = []
        out.append(line)
    return "\n".join(out).strip()


def run(name: str, out: Path) -> None:
    """Runs one example with its gallery settings into ``out`` (over any earlier run) and
    records how: ``run.json`` (the command, the date, the hardware, the wall-clock)."""
    flags = EXAMPLES[name][0]
    cmd = [sys.executable, "-m", f"examples.{name}", *shlex.split(flags)]
    cmd += ["--out", str(out), "--overwrite", "--no-progress", "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    import torch

    record = {
        "command": f"python examples/{name}.py {flags}",
        "date": datetime.date.today().isoformat(),
        "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} cores), torch {torch.__version__}",
        "wall_clock_s": round(time.perf_counter() - start),
    }
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")


def page(name: str, out: Path) -> str:
    """The Markdown page of one example from its docstring and the run in ``out``."""
    module = importlib.import_module(f"examples.{name}")
    title, _, body = (module.__doc__ or name).strip().partition("\n")
    flags, full, executed = EXAMPLES[name]
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    if executed:
        how = f"Executed when the documentation was built, on {metrics.get('device', 'cpu')}:"
    else:
        how = (f"Recorded on {record.get('date', 'an earlier day')} on "
               f"{record.get('hardware', metrics.get('device', 'the CPU'))}, "
               f"{record.get('wall_clock_s', '?')} s in all, training and scoring"
               f"{' (' + record['note'] + ')' if record.get('note') else ''}:")  # fmt: skip
    measured = name not in NOT_MEASURED
    if flags.split() == full.split():
        full_run = "It is the example's documented full setting."
    elif measured:
        full_run = (f"The full run, `python examples/{name}.py {full}`, has its numbers in "
                    "[the results](../results.md).")  # fmt: skip
    else:
        full_run = f"The full run is `python examples/{name}.py {full}` (not measured yet)."
    lines = [
        f"# `{name}`: {title.rstrip('.:')}",
        "",
        body_markdown(body),
        "",
        f"## The run shown here: {metrics.get('epochs', '?')} epochs"
        + (" at most, a stage (early stopping)" if metrics.get("patience") else ""),
        "",
        how,
        "",
        "```bash",
        f"python examples/{name}.py {flags}",
        "```",
        "",
        "The figures and metrics below are this run's. " + full_run,
        "",
    ]
    for image in metrics.get("images", []):
        file = Path(image).name
        path = f"{out.relative_to(GALLERY).as_posix()}/{file}"
        lines += [f"```{{figure}} {path}", f":alt: {file}", "", caption(file), "```", ""]
    for value in metrics.values():  # a list of runs (one per setting): a table of them
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = [c for c in value[0] if c != "image"]
            lines += [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
            for row in value:
                cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                         for c in columns]  # fmt: skip
                lines.append(f"| {' | '.join(cells)} |")
            lines.append("")
    lines += ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if key in ("images", "test_curve") or isinstance(value, (dict, list)):
            continue
        if executed and key == "seconds":  # (the page stays the same from build to build)
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else value
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def index() -> str:
    """The gallery's index: the examples table, then each example's first figure as a
    thumbnail linked to its page."""
    table = (GALLERY / "examples-table.md").read_text().split("\n", 1)[1]
    names = "\n".join(EXAMPLES)
    cards = []
    for name, (_, _, executed) in EXAMPLES.items():
        out = GALLERY / ("built" if executed else "outputs") / name
        images = json.loads((out / "metrics.json").read_text()).get("images", [])
        title = (importlib.import_module(f"examples.{name}").__doc__ or name).split("\n")[0]
        cards += [f"### [`{name}`]({name}.md)", "", title, ""]
        if images:
            path = f"{out.relative_to(GALLERY).as_posix()}/{Path(images[0]).name}"
            cards += [f"```{{image}} {path}", ":width: 260px", f":alt: {name}",
                      f":target: {name}.html", "```", ""]  # fmt: skip
    return (
        "# Gallery\n\nEvery example script, run: its command, figures and metrics.\n"
        f"{table}\n## The runs\n\n"
        + "\n".join(cards)
        + f"\n```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{names}\n```\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--record", nargs="*", default=None, metavar="EXAMPLE",
        help="re-run the recorded (MNIST) examples: those named, or all",
    )  # fmt: skip
    args = p.parse_args(argv)
    for name, (_, _, executed) in EXAMPLES.items():
        out = GALLERY / ("built" if executed else "outputs") / name
        recorded = args.record is not None and (not args.record or name in args.record)
        if executed or recorded:
            run(name, out)
            for junk in ("checkpoint.pt", "checkpoint.prev.pt", ".lock", "history.json"):
                for file in out.rglob(junk):  # (an example with one run folder per setting)
                    file.unlink()
            for folder in sorted(out.glob("*/"), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        (GALLERY / f"{name}.md").write_text(page(name, out))
    (GALLERY / "index.md").write_text(index())


if __name__ == "__main__":
    main()
