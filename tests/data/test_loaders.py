"""Any data pipeline: torchvision datasets through a DataLoader (workers, random transforms),
per-datapoint guides through pv.Indexed, exact resume."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from helpers import SHUFFLING_LOADER, generator, here
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.utils import save_image

import pyro_vae as pv


def image_folder(root, n: int = 48):
    g = generator(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n // 2):
            save_image(torch.rand(1, 28, 28, generator=g), root / label / f"{i}.png")
    flip = transforms.Compose(
        [transforms.Grayscale(), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    return ImageFolder(str(root), transform=flip)


@SHUFFLING_LOADER
def test_a_conv_vae_trains_from_png_files_through_a_dataloader_with_workers(tmp_path):
    dataset = pv.Indexed(image_folder(tmp_path / "images"), binarize="dynamic")
    train = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2)
    vae = pv.models.zoo.conv_vae(latent_dim=4)
    test = DataLoader(dataset, batch_size=16)
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=2,
        device=here(),
        log=False,
        validation=test,
    )
    assert history.val_epoch == [1, 2] and all(map(math.isfinite, history.val_elbo))
    assert history.epoch == [1, 2] and all(math.isfinite(loss) for loss in history.loss)
    vae.eval()
    result = pv.evaluate(vae.model, vae.guide, test, num_particles=4)
    assert result.num_data == 48 and math.isfinite(result.elbo)  # every image, once


def test_a_per_datapoint_guide_reads_the_rows_of_the_loaders_indices():
    x = pv.make_circle(40)[0]
    vae = pv.models.zoo.circle_vae("per-datapoint", num_data=40)
    before = vae.variational.loc.detach().clone()
    seen = list(range(10, 20))  # the loader visits these 10 points only
    loader = DataLoader(pv.Indexed(TensorDataset(x)), batch_size=5, sampler=seen)
    pv.fit(vae.model, vae.guide, loader, epochs=2, device=here(), log=False)
    moved = (vae.variational.loc.detach() != before).any(-1)
    assert moved[10:20].all() and not moved[:10].any() and not moved[20:].any()
    with pytest.raises(ValueError, match=r"wrap the dataset in pv\.Indexed"):
        pv.fit(vae.model, vae.guide, pv.Loader(DataLoader(x), num_data=40), epochs=1)


@SHUFFLING_LOADER
def test_resume_through_a_dataloader_is_exact(tmp_path):
    x = pv.make_circle(64)[0]

    def run(save_dir, epochs, resume, seed):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        vae = pv.models.zoo.circle_vae("amortized")
        loader = DataLoader(pv.Indexed(TensorDataset(x)), batch_size=16, shuffle=True)
        pyro.set_rng_seed(0)
        history = pv.fit(
            vae.model,
            vae.guide,
            loader,
            epochs=epochs,
            device=here(),
            log=False,
            save=pv.Checkpoints(save_dir, resume=resume),
        )
        return vae, history

    full_vae, full = run(tmp_path / "a", 3, False, 0)
    run(tmp_path / "b", 1, False, 0)
    resumed_vae, resumed = run(tmp_path / "b", 3, True, 5)
    assert resumed.loss == full.loss
    for a, b in zip(full_vae.state_dict().values(), resumed_vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", ["cat", None])
def test_a_field_that_is_not_a_number_is_named(bad):
    """Items holding a string or None where a field is named: the field, the item and the
    fix, not torch's dtype error."""

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3), bad if i == 2 else 1

    data = pv.Indexed(Items(), fields=("y",))
    data[0]
    with pytest.raises(TypeError, match=r"the field 'y' of item 2 of Items is .*encode it"):
        data[2]
