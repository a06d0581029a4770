import torch

from dlforge.data.loader import BatchLoader
from dlforge.data.transforms import ImageTransform, TransformConfig, color_jitter, random_rotation


def _batch(n=6, c=1, s=28):
    return torch.randint(0, 256, (n, c, s, s), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_test_transform_is_resize_gray3_normalise():
    cfg = TransformConfig(img_size=48, mean=(0.1307,), std=(0.3081,))
    x = _batch()
    out = ImageTransform(cfg, train=False)(x)
    assert out.shape == (6, 3, 48, 48) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 2])  # grayscale repeated to three channels
    same = ImageTransform(TransformConfig(img_size=28), train=False)(x)
    assert torch.allclose(same[:, 0], (x[:, 0].float() / 255 - 0.1307) / 0.3081, atol=1e-6)


def test_train_transform_is_seeded_and_random():
    t = ImageTransform(TransformConfig(), train=True)
    x = _batch()
    a = t(x, torch.Generator().manual_seed(1))
    b = t(x, torch.Generator().manual_seed(1))
    c = t(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_rotation_is_identity():
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(random_rotation(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_rotation_turns_the_image_by_at_most_the_angle():
    x = torch.zeros(16, 1, 33, 33)
    x[:, 0, 16, 4:29] = 1  # a horizontal bar through the centre
    r = random_rotation(x, 10.0, torch.Generator().manual_seed(0))
    assert (r.sum((1, 2, 3)) - x.sum((1, 2, 3))).abs().max() < 2.5  # mass kept (bilinear blur aside)
    moved = (r - x).abs().amax((1, 2, 3))
    assert (moved > 0.3).sum() >= 8  # most images visibly turned
    # ±10°: the bar's ends (12 px from the centre) move at most 12·sin(10°) ≈ 2.1 px off the row
    rows = torch.nonzero(r[:, 0] > 0.05)[:, 1]
    assert rows.min() >= 16 - 3 and rows.max() <= 16 + 3


def test_color_jitter_stays_in_range_and_bounds_factors():
    x = torch.rand(64, 1, 8, 8)
    y = color_jitter(x, 0.2, 0.2, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1
    assert (y.mean((1, 2, 3)) / x.mean((1, 2, 3))).sub(1).abs().max() < 0.5
    assert torch.equal(color_jitter(x, 0, 0, torch.Generator().manual_seed(0)), x)


def test_rgb_stays_rgb_with_per_channel_stats():
    cfg = TransformConfig(img_size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    x = _batch(c=3, s=8)
    out = ImageTransform(cfg, train=False)(x)
    assert torch.allclose(out[:, 1], (x[:, 1].float() / 255 - 0.4) / 0.2, atol=1e-5)


def test_loader_replays_any_position():
    x, y = _batch(50), torch.arange(50)
    loader = BatchLoader(x, y, 8, shuffle=True, seed=3, transform=ImageTransform(TransformConfig(img_size=16), True))
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start=4))
    assert len(full) == 7 and len(tail) == 3
    for (a, ya), (b, yb) in zip(full[4:], tail):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], list(loader.epoch(3))[0][1])  # a new order each epoch
    assert sorted(torch.cat([b for _, b in full]).tolist()) == list(range(50))
