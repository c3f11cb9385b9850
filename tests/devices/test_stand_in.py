"""The CUDA stand-in (:mod:`pyro_vae.devices.stand_in`) refuses what CUDA refuses and computes
what the CPU computes.

Registering the stand-in's device changes how PyTorch finds its accelerator for the rest of
the process (fake CUDA tensors stop working), so these tests run only in a run that has it as
torch's default device: ``PYRO_VAE_TEST_DEVICE=fake-cuda bash .ci/test`` (CI runs it).
"""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import circle_vae, generator, here
from torch import nn

import pyro_vae as pv
from pyro_vae.devices import stand_in
from pyro_vae.devices.dispatch import DeviceMixError

pytestmark = pytest.mark.skipif(
    not stand_in.is_stand_in(torch.get_default_device()),
    reason="needs the stand-in as torch's default device (PYRO_VAE_TEST_DEVICE=fake-cuda)",
)


def test_a_cpu_tensor_beside_stand_in_ones_is_refused_as_cuda_refuses_it():
    x = torch.ones(3, 2)
    assert x.device.type == stand_in.NAME
    with pytest.raises(DeviceMixError, match="at least two devices"):
        x + torch.ones(3, 2, device="cpu")
    with pytest.raises(DeviceMixError):
        torch.nn.functional.linear(x, torch.ones(4, 2, device="cpu"))
    # what CUDA allows: a 0-dim CPU tensor as a scalar, CPU indices, copies
    twice = (x * torch.tensor(2.0, device="cpu")).cpu()
    assert torch.equal(twice, torch.full((3, 2), 2.0, device="cpu"))
    assert x[torch.tensor([0, 2], device="cpu")].shape == (2, 2)
    assert x.cpu().device.type == "cpu" and x.cpu().to(here()).device.type == stand_in.NAME


def test_a_cpu_generator_drawing_on_the_stand_in_is_refused():
    with pytest.raises(RuntimeError, match="Expected a 'fakecuda' device type for generator"):
        torch.randn(3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.rand(3).bernoulli_(0.5, generator=torch.Generator())
    # its own generator draws, and a CPU generator still draws CPU numbers
    a, b = torch.randn(3, generator=generator(0)), torch.randn(3, generator=generator(0))
    assert torch.equal(a, b) and a.device.type == stand_in.NAME
    cpu = torch.randn(3, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(cpu, a.cpu())  # (the stand-in draws with the CPU's algorithm)


def test_host_only_conversions_fail_as_on_cuda():
    x = torch.ones(2)
    with pytest.raises((RuntimeError, TypeError)):
        x.numpy()
    assert x.tolist() == [1.0, 1.0] and x.sum().item() == 2.0  # host reads: allowed


def test_modules_move_and_convert_with_their_values():
    with torch.device("cpu"):
        net = nn.Linear(3, 2)
    weight = net.weight.detach().clone()
    net.to(here())
    assert net.weight.device.type == stand_in.NAME and isinstance(net.weight, nn.Parameter)
    net.double()
    assert net.weight.dtype == torch.float64 and net.weight.raw.dtype == torch.float64
    net(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
    assert net.weight.grad.device.type == stand_in.NAME
    net.float().cpu()
    assert net.weight.device.type == "cpu" and torch.equal(net.weight.detach(), weight)


def test_a_checkpoint_round_trip_reads_back_as_data():
    state = nn.Linear(3, 2).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    back = torch.load(buffer, weights_only=True)
    assert all(v.device.type == stand_in.NAME for v in back.values())
    assert all(torch.equal(back[k].cpu(), state[k].cpu()) for k in state)
    buffer.seek(0)
    on_cpu = torch.load(buffer, weights_only=True, map_location="cpu")
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in on_cpu.values())


def test_a_fit_on_the_stand_in_takes_the_cpus_steps_exactly():
    """The stand-in runs the CPU's kernels: the same run gives the same losses bit for bit."""

    def run() -> list[float]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = circle_vae()
        x = pv.make_circle(64)[0]
        return pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=16), epochs=2, log=False).loss

    on_stand_in = run()
    with torch.device("cpu"):
        on_cpu = run()
    assert on_stand_in == on_cpu


def test_a_piece_that_makes_its_tensors_on_the_cpu_is_caught_in_training():
    """Positive control: a prior whose forward makes a CPU tensor fails at the first step, as it
    would on a GPU (and passes on the CPU)."""

    class HostPrior(pv.StandardNormalPrior):
        def forward(self):
            return dist.Normal(self.loc + torch.zeros(1, device="cpu"), self.scale).to_event(1)

    vae = circle_vae()
    vae.prior = HostPrior(1)
    with pytest.raises(DeviceMixError):
        pv.fit(vae.model, vae.guide, pv.make_circle(32)[0], epochs=1, log=False)
