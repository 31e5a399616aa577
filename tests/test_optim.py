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
        learning_rate(1, schedule="cosine", warmup_steps=1, d_model=1, lr=1, lr_scale=1)
