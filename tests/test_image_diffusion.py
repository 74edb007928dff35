"""The diffusion model at tiny sizes: its folder saves and loads offline, training resumes from a
checkpoint to the same weights, and sampling returns the labels asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generators.image import diffusion
from generators.image.diffusion import DiffusionTrainParams, load_model, train
from generators.image.phantoms import CLASSES, draw_phantom
from generators.image.sampler import DiffusionSampleParams, plan_blocks, sample
from synth.errors import SpecError

TINY = {"steps": 4, "batch_size": 4, "channels": [16, 32], "warmup_steps": 2, "checkpoint_every": 2, "log_every": 2}
RECORDED_MODEL_FINGERPRINT = "b4f8ace1b3ff812919b105c39701ad96f9348d5e7e15d32c62295ec2016f8cd5"
"""`fingerprint` of TINY, seed 1 and `data`, by the diffusion_train stage of revision 2d68921."""


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # 2 cores shared with other tests: threads would only wait on each other


@pytest.fixture(scope="module")
def data():
    images = np.stack([draw_phantom(i, 16, CLASSES[i % 3]).pixels for i in range(12)])
    return images, np.arange(12) % 3


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_model_folder_saves_and_loads_offline(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path, seed=1)
    assert (result.steps_run, result.resumed_from) == (4, 0) and result.seconds_per_step > 0
    model = load_model(tmp_path / "model")
    assert model.classes == list(CLASSES) and model.size == 16 and model.null_class == 3
    assert model.model_id.startswith("unet-ddpm:")
    saved = torch.load(tmp_path / "checkpoints" / "step-0000004" / "state.pt", weights_only=True)
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, saved["ema"][name]), name  # the folder holds the EMA weights
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["scheduler", "synth_model.json", "unet"]
    again = train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path, seed=1)
    assert again.steps_run == 0  # a finished model of the same config and data is not trained again


def test_a_killed_training_resumes_from_its_checkpoint(data, tmp_path, monkeypatch):
    train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path / "straight", seed=1)
    straight = weights(load_model(tmp_path / "straight" / "model").unet)

    real_checkpoint = diffusion.save_checkpoint

    def checkpoint_then_die(folder, step, *args):
        real_checkpoint(folder, step, *args)
        raise KeyboardInterrupt(f"killed after step {step}")

    monkeypatch.setattr(diffusion, "save_checkpoint", checkpoint_then_die)
    with pytest.raises(KeyboardInterrupt, match="after step 2"):
        train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path / "killed", seed=1)
    monkeypatch.setattr(diffusion, "save_checkpoint", real_checkpoint)
    resumed = train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path / "killed", seed=1)
    assert (resumed.resumed_from, resumed.steps_run) == (2, 2)
    for name, tensor in load_model(tmp_path / "killed" / "model").unet.state_dict().items():
        torch.testing.assert_close(tensor, straight[name], rtol=0, atol=1e-6)


def test_another_config_does_not_resume_a_foreign_checkpoint(data, tmp_path):
    train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path, seed=1)
    other = train(*data, list(CLASSES), DiffusionTrainParams(**{**TINY, "learning_rate": 1e-4}), tmp_path, seed=1)
    assert (other.resumed_from, other.steps_run) == (0, 4)


def test_sampling_is_seeded_and_blocks_carry_the_requested_labels(data, tmp_path):
    train(*data, list(CLASSES), DiffusionTrainParams(**TINY), tmp_path, seed=1)
    model = load_model(tmp_path / "model")
    first = sample(model, [0, 2, 2], seed=5, steps=3, guidance_scale=2.0)
    assert first.shape == (3, 16, 16) and first.dtype == np.uint8
    assert np.array_equal(first, sample(model, [0, 2, 2], seed=5, steps=3, guidance_scale=2.0))
    assert not np.array_equal(first, sample(model, [0, 2, 2], seed=6, steps=3, guidance_scale=2.0))
    # Stochastic DDIM (the CPU preset's eta 1) draws its step noise from the same seed: still reproducible.
    noisy = sample(model, [0, 2, 2], seed=5, steps=3, guidance_scale=2.0, eta=1.0)
    assert np.array_equal(noisy, sample(model, [0, 2, 2], seed=5, steps=3, guidance_scale=2.0, eta=1.0))
    assert not np.array_equal(noisy, first)

    config = DiffusionSampleParams(labels=["dark_lesion", "normal"], images_per_class=5, block_size=2)
    blocks = plan_blocks(config, model.classes, stage_seed=9)
    assert [(b["label"], b["label_id"], b["count"]) for b in blocks] == [
        ("dark_lesion", 2, 2), ("dark_lesion", 2, 2), ("dark_lesion", 2, 1), ("normal", 0, 2), ("normal", 0, 2),
        ("normal", 0, 1)]  # fmt: skip
    assert len({b["seed"] for b in blocks}) == len(blocks)
    with pytest.raises(SpecError, match="sample.labels: unknown label 'tumour'; the model knows: normal, bright_lesion, dark_lesion"):
        plan_blocks(DiffusionSampleParams(labels=["tumour"]), model.classes, stage_seed=9)


def test_the_model_id_is_the_one_the_diffusion_train_stage_gave_the_same_training(data):
    """The fingerprint (the `model` column's id) of these fields, seed and images, as the
    `diffusion_train` stage computed it before it became part of the `diffusion` stage (recorded
    with that revision's `fingerprint`); a field added since counts once it is set otherwise."""
    params = DiffusionTrainParams(**TINY)
    assert diffusion.fingerprint(params, 1, *data, list(CLASSES)) == RECORDED_MODEL_FINGERPRINT
    floor = params.model_copy(update={"min_lr_ratio": 0.2})
    assert diffusion.fingerprint(floor, 1, *data, list(CLASSES)) != RECORDED_MODEL_FINGERPRINT


def test_min_snr_weights_only_the_nearly_clean_timesteps_down():
    predicted, noise = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    abar_t = torch.tensor([0.5, 0.8, 0.99])  # SNR 1, 4, 99
    assert diffusion._loss(predicted, noise, abar_t, None).item() == pytest.approx(1.0)
    assert diffusion._loss(predicted, noise, abar_t, 5.0).item() == pytest.approx((1 + 1 + 5 / 99) / 3)
