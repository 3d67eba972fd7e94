# Copyright (c) det_ext authors.
"""Low-shot linear probe: which samples it draws and what it measures."""
import pytest
import torch

from det_ext.pretrain.probe import (low_shot_indices, low_shot_probe, probe_accuracy,
                                    train_linear_probe)

LABELS = torch.tensor([0] * 40 + [1] * 20 + [2] * 5 + [3] * 2)


def test_low_shot_indices_take_k_per_class_without_replacement():
    idx = low_shot_indices(LABELS, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(LABELS[idx], minlength=4).tolist() == [4, 4, 4, 2]  # class 3 has 2
    assert len(set(idx.tolist())) == len(idx)
    again = low_shot_indices(LABELS, 4, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)  # the same seed draws the same samples for every encoder
    other = low_shot_indices(LABELS, 4, torch.Generator().manual_seed(1))
    assert not torch.equal(idx, other)
    everything = low_shot_indices(LABELS, 100, torch.Generator().manual_seed(0))
    assert sorted(everything.tolist()) == list(range(len(LABELS)))
    with pytest.raises(ValueError, match="shots must be at least 1, got 0"):
        low_shot_indices(LABELS, 0, torch.Generator())


def test_low_shot_probe_separable_and_noisy_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 6
    feats = centers[LABELS] + 0.1 * torch.randn(len(LABELS), 4, generator=g)
    val_labels = torch.tensor([0, 1, 2, 3])
    out = low_shot_probe(feats, LABELS, centers[val_labels], val_labels, 4, shots=(1, 4),
                         draws=3, tail=torch.tensor([2, 3]))
    assert set(out) == {"1", "4"}
    for k, n in (("1", 4), ("4", 14)):  # 4 + 4 + 4 + 2 samples at k = 4
        assert out[k]["num_train_samples"] == n
        assert out[k]["acc"] == out[k]["balanced_acc"] == out[k]["tail_acc"] == 100.0
        assert out[k]["acc_std"] == 0.0
    # noisy clusters: one sample per class is a worse estimate of a class than 16
    labels = torch.arange(4).repeat_interleave(50)
    noisy = centers[labels] + 4.0 * torch.randn(len(labels), 4, generator=g)
    val_labels = torch.arange(4).repeat_interleave(100)
    val = centers[val_labels] + 4.0 * torch.randn(len(val_labels), 4, generator=g)
    curve = low_shot_probe(noisy, labels, val, val_labels, 4, shots=(1, 16), draws=5)
    assert curve["16"]["acc"] > curve["1"]["acc"] + 5
    assert "tail_acc" not in curve["1"]
    with pytest.raises(ValueError, match="draws must be at least 1, got 0"):
        low_shot_probe(noisy, labels, val, val_labels, 4, shots=(1,), draws=0)


def test_low_shot_probe_is_the_mean_of_its_draws():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(len(LABELS), 6, generator=g) + torch.eye(4, 6)[LABELS] * 2
    val_labels = torch.arange(4).repeat(5)
    val = torch.randn(len(val_labels), 6, generator=g) + torch.eye(4, 6)[val_labels] * 2
    out = low_shot_probe(feats, LABELS, val, val_labels, 4, shots=(2,), draws=3, seed=7)["2"]
    accs = []
    for draw in range(3):  # by hand: draw d uses the generator seeded with seed + d
        idx = low_shot_indices(LABELS, 2, torch.Generator().manual_seed(7 + draw))
        clf = train_linear_probe(feats[idx], LABELS[idx], 4, seed=7)
        accs.append(probe_accuracy(clf, val, val_labels)["acc"])
    assert out["acc"] == pytest.approx(sum(accs) / 3)
    assert out["acc_std"] == pytest.approx(torch.tensor(accs).std().item())
