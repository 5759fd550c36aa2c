"""A training step's random numbers belong to its samples (`nerffacespeech.models.stylenerf.draws`):
the images a generator draws for rows of a global batch, and their augmentation, are the same
whether one call computes all the rows or several calls (ranks, micro-batches) share them."""
import pytest
import torch

from nerffacespeech.configs.stylenerf import TrainConfig
from nerffacespeech.models.stylenerf import Generator, draws
from nerffacespeech.train import losses
from nerffacespeech.train.ada import AugmentPipe

torch.set_num_threads(1)
CPU = torch.device("cpu")
TOTAL = 8
MODEL = TrainConfig(data=".", preset="tiny", model={"resolution": 16, "nerf_resolution": 16}).model_config


def blocks(count: int) -> list[draws.Rows]:
    size = TOTAL // count
    return [draws.Rows(i * size, TOTAL) for i in range(count)]


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(MODEL)



def split_images(generator: Generator, count: int) -> torch.Tensor:
    """The step's images computed in `count` blocks, each drawing as a training pass does
    (latents, style mixing, camera, ray jitter, extra pixels)."""
    pieces, n = [], TOTAL // count
    with torch.no_grad():
        for rows in blocks(count):
            with draws.keyed(0, 3, "generator", CPU):
                z = draws.randn((n, MODEL.z_dim), CPU, rows)
                cutoffs = losses.style_mixing_cutoffs(generator.num_ws, 0.9, n, CPU, rows)
                pieces.append(generator(z, mix_z=draws.randn((n, MODEL.z_dim), CPU, rows), mix_cutoff=cutoffs,
                                        nerf_path_pixels=4, rows=rows).img)
    return torch.cat(pieces)


@pytest.mark.parametrize("count", [2, 4, 8])
def test_a_sample_renders_the_same_whichever_block_of_the_step_computes_it(generator, count):
    torch.testing.assert_close(split_images(generator, count), split_images(generator, 1), rtol=1e-4, atol=1e-5)


def test_other_steps_and_passes_draw_other_numbers_and_the_global_generator_is_left_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with draws.keyed(0, 3, "generator", CPU):
        a = draws.randn((TOTAL, 4), CPU, draws.Rows(0, TOTAL))
    with draws.keyed(0, 4, "generator", CPU):
        b = draws.randn((TOTAL, 4), CPU, draws.Rows(0, TOTAL))
    with draws.keyed(0, 3, "discriminator", CPU):
        c = draws.randn((TOTAL, 4), CPU, draws.Rows(0, TOTAL))
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.rand(3), expected)


def test_a_block_given_as_a_device_tensor_cuts_the_same_rows():
    full = torch.arange(2 * TOTAL * 3).reshape(2 * TOTAL, 3)
    for parts in (1, 2):
        by_int = draws.Rows(2, TOTAL, parts).cut(full, 2 * parts)
        by_tensor = draws.Rows(torch.tensor(2), TOTAL, parts).cut(full, 2 * parts)
        assert torch.equal(by_int, by_tensor)
    with pytest.raises(ValueError, match="does not fit"):
        draws.Rows(6, TOTAL).cut(full, 4)


def test_fakes_and_reals_are_augmented_the_same_in_any_split():
    pipe = AugmentPipe()
    pipe.set_p(0.6)
    torch.manual_seed(1)
    fakes, reals = torch.rand(TOTAL, 3, 16, 16) * 2 - 1, torch.rand(TOTAL, 3, 16, 16) * 2 - 1

    def augmented(count: int) -> torch.Tensor:
        size, out = TOTAL // count, []
        for rows in blocks(count):
            with draws.keyed(0, 3, "discriminator", CPU):
                block = slice(rows.start, rows.start + size)
                out.append(pipe(torch.cat([fakes[block], reals[block]]), rows.stacked(2)).reshape(2, size, 3, 16, 16))
        return torch.cat(out, 1)

    whole = augmented(1)
    assert not torch.equal(whole[0], fakes) and not torch.equal(whole[1], reals)
    for count in (2, 4):
        torch.testing.assert_close(augmented(count), whole, rtol=1e-4, atol=1e-5)
