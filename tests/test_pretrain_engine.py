# Copyright (c) det_ext authors.
"""Momentum-contrast engine and the PCL / MoPro / ICCL losses on hand-built cases."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from det_ext.pretrain.cli import build_pretrain_config
from det_ext.pretrain.data import ClassAwareSampler
from det_ext.pretrain.encoder import ResNetEncoder
from det_ext.pretrain.iccl import ICCL, centroid_contrastive_loss, interpolate
from det_ext.pretrain.moco import MomentumContrast
from det_ext.pretrain.mopro import MoPro, clean_labels, update_prototypes
from det_ext.pretrain.pcl import PCL, cluster_density, kmeans, proto_logits, run_e_step
from det_ext.pretrain.train import instance_temperature


class _Lin(nn.Module):
    """A tiny encoder: flatten -> linear -> normalised embedding (+ logits)."""

    def __init__(self, d_in=4, dim=3, classes=0):
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.classifier = nn.Linear(d_in, classes) if classes else None

    def forward(self, x):
        x = x.flatten(1)
        out = {"embedding": F.normalize(self.proj(x), dim=1)}
        if self.classifier is not None:
            out["logits"] = self.classifier(x)
        return out


def _engine(cls=MomentumContrast, **kw):
    torch.manual_seed(0)
    args = dict(dim=3, queue_size=5, momentum=0.9, temperature=0.5)
    args.update(kw)
    enc = args.pop("encoder", _Lin())
    return cls(enc, **args)


def test_momentum_update():
    m = _engine()
    with torch.no_grad():
        m.encoder_q.proj.weight.fill_(1.0)
        m.encoder_k.proj.weight.fill_(3.0)
    assert not m.encoder_k.proj.weight.requires_grad
    m.momentum_update()
    torch.testing.assert_close(m.encoder_k.proj.weight, torch.full((3, 4), 0.9 * 3 + 0.1 * 1))


def test_queue_wraps_around():
    m = _engine()
    a = F.normalize(torch.arange(9.0).view(3, 3) + 1, dim=1)
    m.enqueue(a)
    assert int(m.queue_ptr) == 3
    torch.testing.assert_close(m.queue[:, :3], a.T)
    b = F.normalize(-torch.arange(9.0).view(3, 3) - 1, dim=1)
    m.enqueue(b)
    assert int(m.queue_ptr) == 1  # 3 + 3 = 6 -> wraps to 1 in a queue of 5
    torch.testing.assert_close(m.queue[:, 3:5], b[:2].T)
    torch.testing.assert_close(m.queue[:, 0], b[2])
    torch.testing.assert_close(m.queue[:, 1:3], a[1:].T)


def test_instance_logits_hand_computed():
    m = _engine(temperature=0.5)
    q = torch.tensor([[1.0, 0.0, 0.0]])
    k = torch.tensor([[0.6, 0.8, 0.0]])
    m.queue.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0], [0.0, 1.0, 0.0, 0.0, 0.0],
                                [0.0, 0.0, 1.0, 1.0, 0.0]]))
    logits, labels = m.instance_logits(q, k)
    torch.testing.assert_close(logits, torch.tensor([[1.2, 2.0, 0.0, 0.0, 0.0, -2.0]]))
    assert labels.tolist() == [0]
    expected = -1.2 + math.log(math.exp(1.2) + math.exp(2.0) + 3 * math.exp(0.0) + math.exp(-2))
    assert float(F.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_instance_temperature_schedule():
    moco = build_pretrain_config("", ["PRETRAIN.MOCO.TEMPERATURE", "0.3"]).PRETRAIN.MOCO
    assert instance_temperature(moco, 0.0) == instance_temperature(moco, 2.7) == 0.3
    moco = build_pretrain_config("", ["PRETRAIN.MOCO.TEMPERATURE_SCHEDULE", "cosine",
                                      "PRETRAIN.MOCO.TEMPERATURE_RANGE", "(0.1, 0.5)",
                                      "PRETRAIN.MOCO.TEMPERATURE_PERIOD", "2.0"]).PRETRAIN.MOCO
    # 0.1 + 0.4 (1 + cos(pi t)) / 2: tau_max at the start of each period, tau_min half-way.
    for epochs, tau in [(0.0, 0.5), (0.5, 0.3), (1.0, 0.1), (1.5, 0.3), (2.0, 0.5), (3.0, 0.1),
                        (2.0 / 3.0, 0.1 + 0.4 * 0.25)]:
        assert instance_temperature(moco, epochs) == pytest.approx(tau, abs=1e-12), epochs
    # The engine's InfoNCE divides by instance_temperature, not by the base temperature.
    m = _engine(temperature=0.5)
    q, k = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.6, 0.8, 0.0]])
    base, _ = m.instance_logits(q, k)
    m.instance_temperature = 0.25
    torch.testing.assert_close(m.instance_logits(q, k)[0], 2.0 * base)
    assert m.temperature == 0.5


def test_encode_keys_keeps_order_with_shuffled_chunks():
    m = _engine(shuffle_splits=3)
    x = torch.randn(7, 4)
    ref = m.encoder_k(x)["embedding"]
    torch.testing.assert_close(m.encode_keys(x)["embedding"], ref)


def test_kmeans_recovers_blobs_and_density():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centers])
    cent, assign, sq = kmeans(x, 3, niter=10, nredo=3, seed=0)
    for i in range(3):  # each blob is one cluster
        assert len(set(assign[20 * i:20 * (i + 1)].tolist())) == 1
    assert len(set(assign.tolist())) == 3
    torch.testing.assert_close(sq, ((x - cent[assign]) ** 2).sum(1), atol=1e-4, rtol=1e-4)


def test_cluster_density_hand_computed():
    # cluster 0: distances 1, 3 (n=2); cluster 1: 2, 2, 2 (n=3); cluster 2: one point (n=1).
    assign = torch.tensor([0, 0, 1, 1, 1, 2])
    sq = torch.tensor([1.0, 9.0, 4.0, 4.0, 4.0, 0.0])
    phi0, phi1 = 2.0 / math.log(12), 2.0 / math.log(13)
    raw = torch.tensor([phi0, phi1, max(phi0, phi1)])  # n <= 1 gets the max
    lo, hi = torch.quantile(raw, 0.1), torch.quantile(raw, 0.9)
    clipped = raw.clamp(float(lo), float(hi))
    expected = 0.2 * clipped / clipped.mean()
    got = cluster_density(sq, assign, 3, temperature=0.2)
    torch.testing.assert_close(got, expected)
    assert float(got.mean()) == pytest.approx(0.2)


def test_run_e_step_shapes():
    x = F.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    res = run_e_step(x, [4, 8], temperature=0.2, niter=5)
    assert [c.shape for c in res["centroids"]] == [(4, 8), (8, 8)]
    assert all(torch.allclose(c.norm(dim=1), torch.ones(len(c))) for c in res["centroids"])
    assert [len(a) for a in res["im2cluster"]] == [40, 40]
    assert all(float(d.mean()) == pytest.approx(0.2) for d in res["density"])


def test_proto_logits_shape_and_values():
    cent = F.normalize(torch.randn(10, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    density = torch.linspace(0.1, 1.0, 10)
    im2cluster = torch.tensor([0, 3, 3, 7, 9, 1])
    q = F.normalize(torch.randn(3, 3), dim=1)
    index = torch.tensor([1, 3, 5])  # positives: clusters 3, 7, 1
    logits, target = proto_logits(q, index, im2cluster, cent, density, num_neg=4,
                                  generator=torch.Generator().manual_seed(0))
    assert logits.shape == (3, 3 + 4) and target.tolist() == [0, 1, 2]
    for i, c in enumerate([3, 7, 1]):  # column i is row i's positive, divided by its phi
        torch.testing.assert_close(logits[:, i], q @ cent[c] / density[c])
    # r larger than the available negatives: capped at #clusters - #distinct positives.
    logits, _ = proto_logits(q, index, im2cluster, cent, density, num_neg=100)
    assert logits.shape == (3, 3 + 7)
    # every negative column is a non-positive cluster's scaled similarity
    negs = logits[:, 3:]
    allowed = [c for c in range(10) if c not in (3, 7, 1)]
    for j in range(7):
        assert any(torch.allclose(negs[:, j], q @ cent[c] / density[c]) for c in allowed)


def test_pcl_forward_proto_loss():
    m = _engine(PCL, num_neg_protos=2, queue_size=8)
    x_q, x_k = torch.randn(4, 4), torch.randn(4, 4)
    out = m({"img_q": x_q, "img_k": x_k, "index": torch.arange(4)})
    assert set(out) == {"loss_inst"}
    feats = torch.randn(4, 3)
    m.set_clusters(run_e_step(F.normalize(feats, dim=1), [2, 3], 0.2, niter=3))
    out = m({"img_q": x_q, "img_k": x_k, "index": torch.arange(4)})
    assert set(out) == {"loss_inst", "loss_proto"} and torch.isfinite(out["loss_proto"])
    out["loss_proto"].backward()
    assert m.encoder_q.proj.weight.grad is not None


def _probs_to_logits(p):
    return torch.log(torch.tensor(p))


def test_mopro_cleaning_thresholds():
    # C = 4 classes, so 1/C = 0.25
    cls = _probs_to_logits([[0.30, 0.30, 0.20, 0.20],   # s[y=0] = 0.3 > 0.25: keep
                            [0.05, 0.85, 0.05, 0.05],   # s[y=0] = 0.05, max 0.85 > 0.8: relabel 1
                            [0.10, 0.40, 0.40, 0.10],   # s[y=0] = 0.10, max 0.4: OOD
                            [0.25, 0.25, 0.25, 0.25],   # s[y] = 1/C exactly: not kept, OOD
                            [0.02, 0.02, 0.94, 0.02]])  # s[y=2] high: keep
    target = torch.tensor([0, 0, 0, 1, 2])
    new, clean, relabel = clean_labels(cls, cls, target, alpha=0.5, pseudo_th=0.8)
    assert new.tolist() == [0, 1, 0, 1, 2]
    assert clean.tolist() == [True, True, False, False, True]
    assert relabel.tolist() == [False, True, False, False, False]
    # alpha mixes classifier and prototype scores: s = 0.5 * 0.9 + 0.5 * 0.1 = 0.5 > 1/C
    a = _probs_to_logits([[0.9, 0.05, 0.03, 0.02]])
    b = _probs_to_logits([[0.1, 0.1, 0.7, 0.1]])
    _, clean, _ = clean_labels(a, b, torch.tensor([0]), alpha=0.5)
    assert clean.tolist() == [True]
    # max s = 0.5*0.95 + 0.5*0.7 = 0.825 > 0.8 at class 2 with s[y=0] = 0.025: relabel to 2
    a = _probs_to_logits([[0.02, 0.02, 0.95, 0.01]])
    b = _probs_to_logits([[0.03, 0.17, 0.7, 0.1]])
    new, clean, rel = clean_labels(a, b, torch.tensor([0]), alpha=0.5, pseudo_th=0.8)
    assert new.tolist() == [2] and rel.tolist() == [True]
    _, clean, rel = clean_labels(a, b, torch.tensor([0]), alpha=0.5, pseudo_th=0.83)
    assert clean.tolist() == [False] and rel.tolist() == [False]


def test_prototype_ema_and_renormalisation():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    update_prototypes(protos, feats, torch.tensor([0, 0, 1]), momentum=0.5)
    p0 = torch.tensor([1.0, 0.0])
    p0 = 0.5 * p0 + 0.5 * feats[0]
    p0 = 0.5 * p0 + 0.5 * feats[1]  # sequential, not averaged
    p1 = 0.5 * torch.tensor([0.0, 1.0]) + 0.5 * feats[2]
    torch.testing.assert_close(protos, F.normalize(torch.stack([p0, p1]), dim=1))


def test_mopro_forward_drops_ood_from_update():
    m = _engine(MoPro, encoder=_Lin(classes=3), num_classes=3, start_clean_epoch=0,
                proto_momentum=0.5, queue_size=8)
    out = m({"img_q": torch.randn(4, 4), "img_k": torch.randn(4, 4),
             "target": torch.tensor([0, 1, 2, 0])}, epoch=1)
    assert {"loss_cls", "loss_inst", "loss_proto", "num_clean"} <= set(out)
    assert torch.allclose(m.prototypes.norm(dim=1)[m.prototypes.norm(dim=1) > 0], torch.ones(1))


def test_mopro_logit_adjustment():
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    m = _engine(MoPro, encoder=_Lin(classes=3), num_classes=3, logit_adjustment=0.5)
    m.set_class_prior(torch.tensor([6, 2, 0]))  # an unseen class counts as one
    torch.testing.assert_close(m.log_prior, torch.log(torch.tensor([6.0, 2.0, 1.0]) / 9.0))
    raw = m.encoder_q.classifier(x).detach()
    out = m({"img_q": x, "img_k": torch.randn(4, 4), "target": y}, epoch=0)
    torch.testing.assert_close(out["loss_cls"], F.cross_entropy(raw + 0.5 * m.log_prior, y))
    plain = _engine(MoPro, encoder=_Lin(classes=3), num_classes=3)
    plain.set_class_prior(torch.tensor([6, 2, 0]))
    raw = plain.encoder_q.classifier(x).detach()
    out = plain({"img_q": x, "img_k": torch.randn(4, 4), "target": y}, epoch=0)
    torch.testing.assert_close(out["loss_cls"], F.cross_entropy(raw, y))


def test_interpolation():
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    lam = torch.tensor([0.25, 1.0])
    mixed, eff = interpolate(a, b, lam, "mixup")
    torch.testing.assert_close(mixed[0], torch.full((3, 4, 4), 0.25))
    torch.testing.assert_close(mixed[1], a[1])
    assert eff.tolist() == lam.tolist()
    mixed, eff = interpolate(a, b, torch.tensor([0.75, 0.0]), "cutmix",
                             generator=torch.Generator().manual_seed(0))
    # lam = fraction of x_a kept: a 2x2 box of x_b pasted (area 4/16), and all of x_b for lam = 0.
    assert eff.tolist() == [0.75, 0.0]
    assert float(mixed[0].mean()) == pytest.approx(0.75) and float(mixed[1].sum()) == 0.0
    with pytest.raises(ValueError, match="ICCL.MIX"):
        interpolate(a, b, lam, "blend")


def test_centroid_contrastive_loss_hand_computed():
    z = torch.tensor([[1.0, 0.0]])
    cent = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    lam = torch.tensor([0.7])
    loss = centroid_contrastive_loss(z, cent, torch.tensor([0]), torch.tensor([1]), lam, 0.5)
    logits = torch.tensor([2.0, 0.0, -2.0])
    logp = logits - torch.logsumexp(logits, 0)
    assert float(loss) == pytest.approx(float(-0.7 * logp[0] - 0.3 * logp[1]), rel=1e-6)
    # lam = 1 is plain centroid cross-entropy on y_a
    loss1 = centroid_contrastive_loss(z, cent, torch.tensor([2]), torch.tensor([1]),
                                      torch.tensor([1.0]), 0.5)
    assert float(loss1) == pytest.approx(float(-logp[2]), rel=1e-6)


def test_iccl_forward_and_instance_only():
    kw = dict(encoder=_Lin(classes=3), num_classes=3, warmup_epochs=0, queue_size=8)
    batch = {"img_q": torch.randn(4, 4), "img_k": torch.randn(4, 4),
             "target": torch.tensor([0, 0, 0, 1]), "img_b": torch.randn(4, 4),
             "target_b": torch.tensor([2, 1, 2, 1])}
    m = _engine(ICCL, **kw)
    out = m(batch, epoch=0)
    assert set(out) == {"loss_inst", "loss_cls", "loss_icc"}
    assert torch.allclose(m.centroids.norm(dim=1), torch.ones(3))  # both samplers feed centroids
    base = _engine(ICCL, mix="none", **dict(kw, encoder=_Lin(classes=3)))
    assert not base.uses_class_aware_sampler
    out = base({k: batch[k] for k in ("img_q", "img_k", "target")}, epoch=5)
    assert set(out) == {"loss_inst", "loss_cls"}


@pytest.mark.parametrize("mixed_float32", [True, False])
def test_iccl_mixed_forward_precision_under_autocast(mixed_float32):
    """Under bfloat16 autocast the interpolated images' pass runs in float32 unless switched
    off; the instance pass stays bfloat16 either way, and the losses match float32."""
    kw = dict(num_classes=3, warmup_epochs=0, queue_size=8, mixed_forward_float32=mixed_float32)
    torch.manual_seed(1)
    batch = {"img_q": torch.randn(4, 4), "img_k": torch.randn(4, 4),
             "target": torch.tensor([0, 0, 0, 1]), "img_b": torch.randn(4, 4),
             "target_b": torch.tensor([2, 1, 2, 1])}

    def model():
        torch.manual_seed(0)  # the encoder is built before _engine seeds
        return _engine(ICCL, encoder=_Lin(classes=3), **kw)

    ref = model()(batch, epoch=0)
    m = model()
    dtypes = []
    m.encoder_q.register_forward_hook(lambda mod, args, out: dtypes.append(
        (args[0].data_ptr(), out["embedding"].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch, epoch=0)
    by_input = dict(dtypes)  # input storage -> embedding dtype
    assert by_input.pop(batch["img_q"].data_ptr()) == torch.bfloat16
    assert list(by_input.values()) == [torch.float32 if mixed_float32 else torch.bfloat16]
    for k, v in ref.items():
        assert float(out[k]) == pytest.approx(float(v), rel=0.05, abs=0.02), k


def test_class_aware_sampler_balances_classes():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    s = ClassAwareSampler(labels, 3000, exponent=0.0, seed=0)
    counts = torch.bincount(labels[torch.tensor(list(s))], minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.04)
    s1 = ClassAwareSampler(labels, 3000, exponent=1.0, seed=0)  # exponent 1: instance-balanced
    counts = torch.bincount(labels[torch.tensor(list(s1))], minlength=3).float() / 3000
    assert abs(float(counts[0]) - 0.9) < 0.04
    assert list(ClassAwareSampler(labels, 50, seed=3)) == \
        list(ClassAwareSampler(labels, 50, seed=3))


def test_encoder_heads_names():
    assert {"fc.0.weight", "fc.2.weight"} <= set(ResNetEncoder("resnet18", "mlp").state_dict())
    names = set(ResNetEncoder("resnet18", "mopro", num_classes=4).state_dict())
    assert {"classifier.weight", "fc1.weight", "fc2.weight", "layer1.0.bn1.weight"} <= names
    assert not any(n.startswith("fc.") for n in names)
    out = ResNetEncoder("resnet18", "mopro", dim=16, num_classes=4)(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 4) and out["embedding"].shape == (2, 16)


def test_linear_probe_and_tail_accuracy():
    from det_ext.pretrain.probe import probe_accuracy, tail_classes, train_linear_probe

    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 6
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 5 + [3] * 2)
    feats = centers[labels] + torch.randn(len(labels), 4, generator=g)
    clf = train_linear_probe(feats, labels, 4, epochs=200)
    tail = tail_classes(["f", "f", "c", "r"])
    assert tail.tolist() == [2, 3]
    val_labels = torch.tensor([0, 1, 2, 3, 3])
    val = centers[val_labels]
    val[4] = centers[0]  # a tail sample that looks like class 0: wrong
    acc = probe_accuracy(clf, val, val_labels, tail)
    assert acc["acc"] == pytest.approx(80.0) and acc["tail_acc"] == pytest.approx(200 / 3)
    # classes 0, 1, 2 right, class 3 half right: (1 + 1 + 1 + 0.5) / 4
    assert acc["balanced_acc"] == pytest.approx(87.5)
    assert acc["num_tail_samples"] == 3


def test_random_rotate_90_in_transforms():
    from det_ext.pretrain.cli import build_pretrain_config
    from det_ext.pretrain.data import RandomRotate90, build_transforms

    img = torch.arange(2 * 3 * 3).reshape(2, 3, 3)
    rotations = {tuple(torch.rot90(img, k, dims=(1, 2)).flatten().tolist()) for k in range(4)}
    torch.manual_seed(0)
    seen = {tuple(RandomRotate90()(img).flatten().tolist()) for _ in range(40)}
    assert seen == rotations
    cfg = build_pretrain_config("", ["PRETRAIN.AUG.ROTATE_90", "True"])
    ops = build_transforms(cfg.PRETRAIN.AUG, 8, "weak").transforms
    assert any(isinstance(op, RandomRotate90) for op in ops)
    cfg = build_pretrain_config("", [])
    assert not any(isinstance(op, RandomRotate90)
                   for op in build_transforms(cfg.PRETRAIN.AUG, 8, "strong").transforms)
