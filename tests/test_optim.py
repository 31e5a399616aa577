"""The learning-rate schedules of the paper (5.3) and of fairseq."""

import math

import pytest

from transformer_mt.training.optim import learning_rate


def noam(step):
    return learning_rate(step, schedule="noam", warmup_steps=4000, d_model=512, lr=0.0, lr_scale=1.0)


def test_noam_follows_the_paper_formula():
    for step in (1, 100, 3999, 4000, 4001, 10_000, 100_000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert math.isclose(noam(step), expected, rel_tol=1e-12)


def test_noam_peaks_at_the_end_of_warmup():
    assert noam(3999) < noam(4000) > noam(4001)
    assert math.isclose(noam(4000), 512**-0.5 * 4000**-0.5)  # about 7e-4


def test_inverse_sqrt_warms_up_linearly_to_the_peak_then_decays():
    def lr(step):
        return learning_rate(step, schedule="inverse_sqrt", warmup_steps=100, d_model=512, lr=1e-3, lr_scale=1.0)

    assert math.isclose(lr(50), 0.5e-3)
    assert math.isclose(lr(100), 1e-3)
    assert math.isclose(lr(400), 0.5e-3)  # sqrt(100 / 400) = 1/2


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="trainer.schedule"):
        learning_rate(1, schedule="cosine_restarts", warmup_steps=1, d_model=1, lr=1, lr_scale=1)


def test_cosine_warms_up_then_follows_half_a_cosine_to_min_lr_at_max_steps():
    def lr(step):
        return learning_rate(
            step, schedule="cosine", warmup_steps=100, d_model=512, lr=1e-3, lr_scale=1.0, max_steps=1100, min_lr=1e-5
        )

    assert math.isclose(lr(50), 0.5e-3) and math.isclose(lr(100), 1e-3)
    assert math.isclose(lr(600), 1e-5 + (1e-3 - 1e-5) / 2)  # half-way through the decay: cos(pi / 2) = 0
    assert math.isclose(lr(1100), 1e-5) and math.isclose(lr(5000), 1e-5)  # the floor, also past max_steps
    decay = [lr(step) for step in range(100, 1101)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))


def test_cosine_settings_that_cannot_work_are_refused():
    from transformer_mt.training.trainer import TrainerConfig

    with pytest.raises(ValueError, match="trainer.min_lr"):
        TrainerConfig(schedule="cosine", lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="trainer.warmup_steps=4000 leaves no step"):
        TrainerConfig(schedule="cosine", warmup_steps=4000, max_steps=4000)
