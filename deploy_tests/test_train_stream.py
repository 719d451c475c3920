"""One pass over the data across several fits (the pruning loop's fits): no fit repeats another's batches."""

from __future__ import annotations

import itertools

import torch

from ccpcsa.data import BatchLoader
from ccpcsa.models import build_model
from ccpcsa.training.engine import TrainConfig, TrainStream, fit, stream_batches

SMALL = "deploy_tests.byo_model:tiny_net"


def _loader(data, seed: int = 3) -> BatchLoader:
    return BatchLoader(data.train, 64, data.mean, data.std, shuffle=True, augment=True, seed=seed, drop_last=True)


def test_stream_from_any_start_is_the_tail_of_the_uninterrupted_stream(synthetic_data):
    n = len(_loader(synthetic_data))
    whole = [x for x, _ in itertools.islice(stream_batches(_loader(synthetic_data), 0), 2 * n + 3)]
    for start in (0, 1, n - 1, n, n + 2):
        tail = [x for x, _ in itertools.islice(stream_batches(_loader(synthetic_data), start), 3)]
        for a, b in zip(tail, whole[start:start + 3], strict=True):
            assert torch.equal(a, b)
    # a new data epoch is a new permutation and new augmentation draws, not a replay of the first
    assert not torch.equal(whole[0], whole[n])


def test_fits_on_one_stream_continue_the_data(synthetic_data):
    """Two fits of 4 steps on one stream see stream batches 0-3 and 4-7; without a stream both see batches 0-3."""
    seen: list[torch.Tensor] = []
    model = build_model(SMALL, 10, width=8)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, max_steps_per_epoch=4, seed=3)
    stream = TrainStream()
    fit(model, synthetic_data, cfg, progress=False, stream=stream)
    fit(model, synthetic_data, cfg, progress=False, stream=stream)
    assert stream.step == 8 and len(seen) == 8
    expected = [x for x, _ in itertools.islice(stream_batches(_loader(synthetic_data), 0), 8)]
    for a, b in zip(seen, expected, strict=True):
        assert torch.equal(a, b)
    seen.clear()
    fit(model, synthetic_data, cfg, progress=False)
    fit(model, synthetic_data, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(seen[:4], seen[4:], strict=True))  # the repetition the stream removes
