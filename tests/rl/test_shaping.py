"""DAPO's overlong penalty, overlong filtering and informative-group selection against hand numbers."""

import pytest
import torch

from prismrl.rl.shaping import informative_groups, overlong_filter_mask, overlong_penalty


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([10, 12, 13, 14, 16, 17])
    # L_max = 16, buffer 4: free up to 12, then -(|y| - 12) / 4, -1 beyond 16
    expected = torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 16, 4), expected)
    with pytest.raises(ValueError, match="buffer: expected an int <= max_length"):
        overlong_penalty(lengths, 4, 8)
    with pytest.raises(ValueError, match="max_length: expected an int >= 1, received 0"):
        overlong_penalty(lengths, 0, 1)


def test_overlong_filter_zeroes_truncated_rows():
    mask = torch.ones(3, 4)
    filtered = overlong_filter_mask(mask, torch.tensor([True, False, True]))
    assert filtered.tolist() == [[1.0] * 4, [0.0] * 4, [1.0] * 4]
    with pytest.raises(ValueError, match="finished: expected shape"):
        overlong_filter_mask(mask, torch.tensor([True]))


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert informative_groups(rewards, 2).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="rewards: expected shape"):
        informative_groups(rewards, 4)


def test_dapo_settings_check_their_fields():
    from prismrl.rl.shaping import DynamicSamplingSettings, OverlongSettings

    assert OverlongSettings() == OverlongSettings(buffer=None, penalty=1.0, filter=False)
    with pytest.raises(ValueError, match="overlong.buffer: expected an int >= 1, received 0"):
        OverlongSettings(buffer=0)
    with pytest.raises(ValueError, match="overlong.penalty: expected a finite float >= 0"):
        OverlongSettings(buffer=4, penalty=-1.0)
    with pytest.raises(TypeError, match="overlong.filter: expected a bool, received 'yes'"):
        OverlongSettings(filter="yes")
    with pytest.raises(ValueError, match="dynamic_sampling.max_rounds: expected an int >= 1, received 0"):
        DynamicSamplingSettings(max_rounds=0)
    with pytest.raises(ValueError, match="dynamic_sampling.min_groups"):
        DynamicSamplingSettings(min_groups=0)


def test_groups_to_resample_and_any_rank():
    from prismrl.rl.shaping import any_rank, groups_to_resample

    informative = torch.tensor([True, False, True, False])
    assert groups_to_resample(informative, None).tolist() == [1, 3]  # every group wanted
    assert groups_to_resample(informative, 3).tolist() == [1, 3]
    assert groups_to_resample(informative, 2).tolist() == []  # enough informative groups
    assert groups_to_resample(informative, 9).tolist() == [1, 3]  # capped at the batch
    assert any_rank(True) and not any_rank(False)  # one process: the flag itself
