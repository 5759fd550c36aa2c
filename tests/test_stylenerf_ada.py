"""Adaptive discriminator augmentation (nerffacespeech/train/ada.py): p follows the
discriminator's overfitting heuristic, every transform is differentiable down to the
generator, and the config validates the fields. Resume exactness with ADA on is part of
tests/test_stylenerf_train.py's preemption test; `status` showing p of tests/test_progress.py.
"""
import pytest
import torch

from nerffacespeech.configs.stylenerf import TrainConfig
from nerffacespeech.train.ada import AdaptiveP, AugmentPipe, build_transforms

BATCH = 16
CPU = torch.device("cpu")


def reals(n: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def run_controller(ada: AdaptiveP, discriminator, steps: int, pipe: AugmentPipe | None = None) -> list[tuple]:
    """The training step's use of ADA: D on augmented reals, sums, an update every interval."""
    pipe = pipe or AugmentPipe()
    history = []
    images = reals()
    for step in range(1, steps + 1):
        pipe.set_p(ada.p)
        ada.accumulate(discriminator(pipe(images)))
        ada.maybe_update(step, BATCH * ada.interval)
        history.append((ada.p, ada.rt))
    return history


def test_a_discriminator_that_always_says_real_drives_p_up_and_one_that_says_fake_drives_it_down():
    says_real = lambda x: torch.ones(x.shape[0])            # noqa: E731  r_t = 1 > target: overfitting
    says_fake = lambda x: -torch.ones(x.shape[0])           # noqa: E731  r_t = -1 < target
    up = run_controller(AdaptiveP("ada", 0.3, 0.6, kimg=1.0, interval=4, device=CPU), says_real, 48)
    ps = [p for p, _ in up]
    assert ps[2] == 0.3 and ps[3] == pytest.approx(0.3 + 64 / 1000)      # moves at the 4th step, by 64 images
    assert all(b >= a for a, b in zip(ps, ps[1:])) and ps[-1] == 1.0     # monotone, clamped at 1
    assert up[-1][1] == 1.0
    down = run_controller(AdaptiveP("ada", 0.3, 0.6, kimg=1.0, interval=4, device=CPU), says_fake, 48)
    ps = [p for p, _ in down]
    assert all(b <= a for a, b in zip(ps, ps[1:])) and ps[-1] == 0.0 and down[-1][1] == -1.0


def test_fixed_keeps_p_and_none_never_augments():
    says_real = lambda x: torch.ones(x.shape[0])            # noqa: E731
    assert {p for p, _ in run_controller(AdaptiveP("fixed", 0.25, 0.6, 1.0, 4, CPU), says_real, 12)} == {0.25}
    assert AdaptiveP("none", 0.25, 0.6, 1.0, 4, CPU).p == 0.0
    pipe = AugmentPipe()
    images = reals()
    pipe.set_p(0.0)
    assert pipe(images) is images                           # p = 0: the identity, no draws


def test_r_t_of_a_memorising_discriminator_settles_at_the_target():
    """A D that recognises exactly the training images (the overfitting extreme) says "real"
    only to an image no transform touched: r_t = 2 P(untouched) - 1 falls as p grows, and the
    controller holds it at the target (0.6) instead of at 1 without augmentation."""
    images = reals()

    def memorising(x: torch.Tensor) -> torch.Tensor:
        distance = (x[:, None] - images[None]).abs().flatten(2).amax(2).amin(1)
        return torch.where(distance < 1e-5, 1.0, -1.0)

    ada = AdaptiveP("ada", 0.0, 0.6, kimg=10.0, interval=4, device=CPU)
    history = run_controller(ada, memorising, 160)
    late = [rt for _, rt in history[80:]]
    assert abs(sum(late) / len(late) - 0.6) < 0.15, late
    assert 0 < ada.p < 0.2


def test_the_state_round_trips_mid_interval():
    ada = AdaptiveP("ada", 0.5, 0.6, 1.0, 4, CPU)
    ada.accumulate(torch.tensor([1.0, -2.0, 3.0]))
    other = AdaptiveP("ada", 0.0, 0.6, 1.0, 4, CPU)
    other.load(ada.state())
    assert other.state() == ada.state() == {"p": 0.5, "rt": 0.0, "sign_sum": 1.0, "sign_count": 3.0}


NAMES = [name for name, _ in build_transforms()]


@pytest.mark.parametrize("name", NAMES)
def test_every_transform_changes_the_image_and_passes_gradients_to_the_generator(name):
    from nerffacespeech.models.stylenerf import Generator

    model = TrainConfig(data=".", preset="tiny", model={"resolution": 16, "nerf_resolution": 16}).model_config
    torch.manual_seed(0)
    generator = Generator(model)
    pipe = AugmentPipe(only=(name,))
    pipe.set_p(1.0)
    fake = generator(torch.randn(4, model.z_dim)).img
    augmented = pipe(fake)
    assert augmented.shape == fake.shape and not torch.equal(augmented, fake)
    (augmented * torch.randn_like(augmented)).sum().backward()
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_the_config_refuses_bad_augmentation_fields():
    _, problems = TrainConfig.parse({"data": ".", "augment": "adaptive", "augment_p": 1.5, "ada_target": 1.0,
                                     "ada_kimg": 0, "ada_interval": 0})
    assert {field for field, _ in problems} == {"augment", "augment_p", "ada_target", "ada_kimg", "ada_interval"}
    cfg, problems = TrainConfig.parse({"data": ".", "augment": "ada"})
    assert problems == [] and (cfg.augment_p, cfg.ada_target, cfg.ada_kimg, cfg.ada_interval) == (0.0, 0.6, 500.0, 4)
