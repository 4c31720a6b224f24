"""Mixup losses: gradient checks in float64, reduction to cross-entropy, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup import MixRecord, draw_record, mix_targets
from mixbatch.mixup import losses as L

D = torch.float64


def _logits(b: int = 6, c: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=D).requires_grad_()


def _rec(b: int = 6, seed: int = 0) -> MixRecord:
    return draw_record(b, None, np.random.default_rng(seed), mixup_alpha=1.0, pairing="random")


Y = torch.tensor([0, 1, 2, 3, 4, 0])


def test_soft_and_mixed_ce_gradcheck_and_reduce_to_ce() -> None:
    z = _logits()
    rec = _rec()
    soft = mix_targets(Y, rec, 5, dtype=D)
    assert gradcheck(lambda t: L.soft_target_cross_entropy(t, soft), (z,))
    assert gradcheck(lambda t: L.mixed_cross_entropy(t, Y, rec), (z,))
    torch.testing.assert_close(L.mixed_cross_entropy(z, Y, rec), L.soft_target_cross_entropy(z, soft))
    one_hot = F.one_hot(Y, 5).to(D)
    torch.testing.assert_close(L.soft_target_cross_entropy(z, one_hot), F.cross_entropy(z, Y))
    torch.testing.assert_close(L.mixed_cross_entropy(z, Y, MixRecord.identity(6)), F.cross_entropy(z, Y))


def test_decoupled_mixup() -> None:
    z = _logits()
    yb = Y.flip(0)
    lam = torch.tensor([0.3, 0.6, 0.9, 0.1, 0.5, 0.7], dtype=D)
    for mode in ("all", "less", "more"):
        assert gradcheck(lambda t, m=mode: L.decoupled_mixup_loss(t, Y, yb, lam, eta=0.5, mode=m), (z,))
    # at lam = 1 the "less" regulariser is empty: plain cross-entropy (the paper's default mode)
    at_one = L.decoupled_mixup_loss(z, Y, yb, 1.0, eta=0.5, mode="less")
    torch.testing.assert_close(at_one, F.cross_entropy(z, Y))
    # the decoupled softmax drops the other mixed class from the denominator
    row = z[0:1].detach()
    got = L.decoupled_mixup_loss(row, Y[:1], torch.tensor([3]), 0.4, eta=1.0, mode="all", reduction="none")
    lp = row.log_softmax(1)
    mce = -(0.4 * lp[0, 0] + 0.6 * lp[0, 3])
    keep0 = [0, 1, 2, 4]
    keep3 = [1, 2, 3, 4]
    dm = -(row[0, 0] - row[0, keep0].logsumexp(0)) - (row[0, 3] - row[0, keep3].logsumexp(0))
    torch.testing.assert_close(got, (mce + dm).view(1))
    with pytest.raises(ConfigError, match="mode"):
        L.decoupled_mixup_loss(z, Y, yb, 0.5, mode="both")
    with pytest.raises(DataError, match="lam"):
        L.decoupled_mixup_loss(z, Y, yb, 1.5)


def test_rankmixup() -> None:
    z, zm = _logits(seed=1), _logits(seed=2)
    rec = _rec()
    soft = mix_targets(Y, rec, 5, dtype=D)
    for conf in ("logit", "prob"):
        assert gradcheck(lambda a, b, c=conf: L.rankmixup_mrl_loss(a, Y, b, soft, confidence=c), (z, zm))
    # lam = 1: every mixed target keeps a class at weight 1, the hinge is masked: plain CE
    ident = mix_targets(Y, MixRecord.identity(6), 5, dtype=D)
    torch.testing.assert_close(L.rankmixup_mrl_loss(z, Y, zm, ident, margin=5.0), F.cross_entropy(z, Y))
    zm3 = torch.randn(3, 6, 5, dtype=D, requires_grad=True)
    rel = torch.rand(3, 6, dtype=D) * 0.5 + 0.5
    assert gradcheck(lambda a, b: L.rankmixup_mndcg_loss(a, Y, b, rel), (z, zm3))
    with pytest.raises(DataError, match="mixed_logits"):
        L.rankmixup_mndcg_loss(z, Y, zm, rel)


def test_metrix() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(6, 4, dtype=D, generator=g).requires_grad_()
    em = torch.randn(6, 4, dtype=D, generator=g).requires_grad_()
    rec = _rec()
    lam = rec.lam.to(D)
    assert gradcheck(lambda a, b: L.metrix_contrastive_loss(a, Y, b, Y, Y[rec.index], lam), (e, em))
    assert gradcheck(lambda a: L.contrastive_pair_loss(a, Y), (e,))
    clean = L.contrastive_pair_loss(e, Y)
    torch.testing.assert_close(L.metrix_contrastive_loss(e, Y, em, Y, Y, 0.3, weight=0.0), clean)
    # lam = 1: a mixed row is its first source only, the partner's class plays no part
    other = torch.tensor([4, 3, 2, 1, 0, 2])
    torch.testing.assert_close(L.metrix_contrastive_loss(e, Y, em, Y, other, 1.0),
                               L.metrix_contrastive_loss(e, Y, em, Y, Y, 1.0))
    assert L.metrix_contrastive_loss(e, Y, em, Y, other, 0.5).item() != pytest.approx(
        L.metrix_contrastive_loss(e, Y, em, Y, Y, 0.5).item())


def test_mochi() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, dtype=D, generator=g).requires_grad_()
    k = torch.randn(4, 8, dtype=D, generator=g).requires_grad_()
    queue = MoCo = L.MoCoQueue(8, 32, seed=1)
    qk = MoCo.keys.to(D)
    syn = L.mochi_synthesize(q, qk, n_hard=8, s=5, s_prime=3, generator=torch.Generator().manual_seed(3))
    assert syn.shape == (4, 8, 8) and not syn.requires_grad
    # the synthetic negatives are constants (gradients stopped, as in the paper)
    assert gradcheck(lambda a, b: L.mochi_loss(a, b, qk, synthetic=syn), (q, k))
    logits = L.mochi_logits(q, k, qk, n_hard=8, s=5, s_prime=3, generator=torch.Generator().manual_seed(3))
    assert logits.shape == (4, 1 + 32 + 5 + 3)
    again = L.mochi_synthesize(q, qk, n_hard=8, s=5, s_prime=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(syn, again)                       # the same generator seed, the same negatives
    plain = L.mochi_loss(q, k, qk, s=0, s_prime=0)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    ref = F.cross_entropy(torch.cat([(qn * kn).sum(1, keepdim=True), qn @ qk.T], 1) / 0.2,
                          torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(plain, ref)
    queue.enqueue(torch.randn(40, 8))
    state = queue.state_dict()
    assert state["ptr"] == 8
    with pytest.raises(DataError, match="keys"):
        queue.enqueue(torch.randn(2, 3))


def test_supremix() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, dtype=D, generator=g).requires_grad_()
    y = torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 2.0], dtype=D)
    assert gradcheck(lambda t: L.supremix_loss(t, y), (z,))
    assert gradcheck(lambda t: L.supremix_loss(t, y, hard_pairs=False), (z,))
    # hard pairs add negatives and positives: the loss changes
    assert L.supremix_loss(z, y).item() != pytest.approx(L.supremix_loss(z, y, hard_pairs=False).item())
    with pytest.raises(DataError, match="no anchor has a positive"):
        L.supremix_loss(z, torch.arange(8, dtype=D), hard_pairs=False)


def test_barlow_twins() -> None:
    g = torch.Generator().manual_seed(0)
    za, zb, zm = (torch.randn(10, 4, dtype=D, generator=g).requires_grad_() for _ in range(3))
    perm = torch.randperm(10, generator=g)
    assert gradcheck(lambda a, b, m: L.mixed_barlow_twins_regularizer(a, b, m, perm, 0.3), (za, zb, zm))
    assert gradcheck(lambda a, b: L.barlow_twins_loss(a, b), (za, zb))
    # lam = 1: the mixture is x_A itself, its correlations equal the targets
    assert L.mixed_barlow_twins_regularizer(za, zb, za, perm, 1.0).item() == pytest.approx(0.0, abs=1e-20)
    assert L.mixed_barlow_twins_regularizer(za, zb, zm, perm, 1.0).item() > 0


def test_mixmatch_and_fixmatch() -> None:
    zx, zu = _logits(seed=3), _logits(seed=4)
    px = F.one_hot(Y, 5).to(D)
    qu = L.sharpen(torch.rand(6, 5, dtype=D).softmax(1), 0.5)
    assert gradcheck(lambda a, b: L.mixmatch_loss(a, px, b, qu), (zx, zu))
    torch.testing.assert_close(L.mixmatch_loss(zx, px, zu, qu, lambda_u=0.0), F.cross_entropy(zx, Y))
    p = torch.tensor([[0.6, 0.4]])
    torch.testing.assert_close(L.sharpen(p, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))
    x = torch.randn(4, 3)
    u = [torch.randn(4, 3), torch.randn(4, 3)]
    xm, pm, um, _ = L.mixmatch_mix(x, F.one_hot(Y[:4], 5).float(), u, qu[:4].float(), 0.75,
                                    np.random.default_rng(0))
    assert xm.shape == (4, 3) and um.shape == (8, 3) and torch.allclose(pm.sum(1), torch.ones(4))
    zw, zs = _logits(seed=5), _logits(seed=6)
    zw_conf = zw.detach() * 20
    assert gradcheck(lambda a, b: L.fixmatch_loss(a, Y, zw_conf, b, threshold=0.5), (zx, zs))
    torch.testing.assert_close(L.fixmatch_loss(zx, Y, zw, zs, threshold=1.0), F.cross_entropy(zx, Y))


def test_dualmix_replay_pairs_across_sets() -> None:
    x_new, x_mem = torch.randn(4, 3, 6, 6), torch.randn(3, 3, 6, 6)
    out, soft, rec = L.dualmix_replay(x_new, torch.tensor([0, 1, 0, 1]), x_mem, torch.tensor([2, 3, 2]),
                                      num_classes=4, rng=np.random.default_rng(0))
    assert out.shape == (7, 3, 6, 6) and soft.shape == (7, 4)
    assert bool((rec.index[:4] >= 4).all()) and bool((rec.index[4:] < 4).all())
    with pytest.raises(DataError, match="x_mem"):
        L.dualmix_replay(x_new, torch.tensor([0, 1, 0, 1]), torch.randn(2, 3, 5, 5), torch.tensor([2, 3]), 4)


def test_adautomix_and_adaptivemix() -> None:
    torch.manual_seed(0)
    gen = L.MixMaskGenerator(1, hidden=2).double()
    x = torch.randn(4, 1, 5, 5, dtype=D, requires_grad=True)
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=D)
    idx = torch.tensor([1, 0, 3, 2])

    teacher = L.EmaTeacher(nn.Sequential(nn.Flatten(), nn.Linear(25, 3)).double())
    y3 = torch.tensor([0, 1, 2, 0])

    def f(t: torch.Tensor) -> torch.Tensor:
        mixed, mask, lam_eff = L.adautomix_mix(gen, t, idx, lam)
        out = teacher(torch.cat([mixed, t, t[idx]]))
        t_mix, t_a, t_b = out.chunk(3)
        soft = lam_eff[:, None] * F.one_hot(y3, 3) + (1 - lam_eff[:, None]) * F.one_hot(y3[idx], 3)
        cos = L.adautomix_cosine_term(t_mix, [t_a, t_b], [lam, 1 - lam])
        return L.adautomix_generator_loss(L.soft_target_cross_entropy(t_mix, soft), cos, beta=0.3,
                                          mask=mask, lam=lam, lam_weight=2.0)

    assert gradcheck(f, (x,))
    with torch.no_grad():
        for p in gen.parameters():
            p.zero_()
    _, _, lam_eff = L.adautomix_mix(gen, x, idx, lam)
    torch.testing.assert_close(lam_eff, lam.clamp(1e-4, 1 - 1e-4))   # a blank generator keeps lam
    fa, fb, fm = (torch.randn(4, 6, dtype=D, requires_grad=True) for _ in range(3))
    assert gradcheck(lambda m: L.adaptivemix_loss(m, fa, fb, lam, noise_std=0.0), (fm,))
    exact = lam[:, None] * fa + (1 - lam[:, None]) * fb
    assert L.adaptivemix_loss(exact, fa, fb, lam, noise_std=0.0, normalize=False).item() == pytest.approx(0.0)
    assert L.adaptivemix_loss(fm, fa, fb, lam, noise_std=0.0).item() > 0


def test_adautomix_teacher_and_objective() -> None:
    """The EMA teacher follows psi^ <- xi psi^ + (1 - xi) psi; the generator's objective is
    -beta L_amce + (1 - beta) L_cos on adversarial steps and L_amce on cooperative ones."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    teacher = L.EmaTeacher(student, momentum=0.9)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    assert not any(p.requires_grad for p in teacher.model.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student(torch.randn(8, 4, dtype=D))                        # moves the batch-norm statistics
    teacher.update(student)
    for name, p in student.named_parameters():
        torch.testing.assert_close(teacher.model.state_dict()[name], 0.9 * before[name] + 0.1 * p.detach())
    torch.testing.assert_close(teacher.model[1].running_mean, student[1].running_mean)
    state = teacher.state_dict()
    other = L.EmaTeacher(student)
    other.load_state_dict(state)
    assert other.momentum == 0.9 and torch.equal(other.model[0].weight, teacher.model[0].weight)
    with pytest.raises(DataError, match="student"):
        teacher.update(nn.Linear(4, 3).double())
    # momentum: 0.999 at the start, 0.999999 at the end, increasing along a cosine
    m = [L.ema_momentum(t, 10) for t in range(11)]
    assert m[0] == pytest.approx(0.999) and m[-1] == pytest.approx(0.999999)
    assert m[5] == pytest.approx((0.999 + 0.999999) / 2)
    assert all(a < b for a, b in itertools.pairwise(m))
    with pytest.raises(ConfigError, match="momentum"):
        L.EmaTeacher(student, momentum=1.5)
    # cosine term: identical outputs give sum_k lam_k; the objective's two forms
    z = torch.randn(5, 3, dtype=D, requires_grad=True)
    assert L.adautomix_cosine_term(z, [z, z], [0.3, 0.7]).item() == pytest.approx(1.0)
    other_z, w = torch.randn(5, 3, dtype=D), torch.rand(5, dtype=D)
    assert gradcheck(lambda t: L.adautomix_cosine_term(t, [other_z, -other_z], [w, 0.4]), (z,))
    amce, cos = torch.tensor(2.0, dtype=D), torch.tensor(0.5, dtype=D)
    assert L.adautomix_generator_loss(amce, cos, beta=0.3).item() == pytest.approx(-0.6 + 0.35)
    assert L.adautomix_generator_loss(amce, cos, adversarial=False).item() == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="cosine"):
        L.adautomix_generator_loss(amce)
    with pytest.raises(ConfigError, match="beta"):
        L.adautomix_generator_loss(amce, cos, beta=2.0)
    with pytest.raises(DataError, match="lams"):
        L.adautomix_cosine_term(z, [z, z], [0.5])


def test_dualmix_adaptive_label_ratio() -> None:
    """Remix's rule as AdpMix's label ratio: a mixture mostly of a frequent class that holds a
    share of a rare class is labelled rare; balanced pairs keep the pixel ratio."""
    lam = torch.tensor([0.3, 0.8, 0.3, 0.9, 0.4, 0.6])
    n_own = torch.tensor([300, 300, 10, 10, 50, 50])
    n_partner = torch.tensor([10, 10, 300, 300, 40, 40])
    got = L.adaptive_label_ratio(lam, n_own, n_partner, kappa=3.0, tau=0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.8, 0.3, 1.0, 0.4, 0.6]))
    # stream (new classes 2, 3: frequent) against memory (old classes 0, 1: rare)
    x_new, x_mem = torch.randn(6, 1, 4, 4), torch.randn(4, 1, 4, 4)
    y_new, y_mem = torch.tensor([2, 3, 2, 3, 2, 3]), torch.tensor([0, 1, 0, 1])
    counts = torch.tensor([5, 5, 100, 100])
    out, soft, rec = L.dualmix_replay(x_new, y_new, x_mem, y_mem, num_classes=4, rng=np.random.default_rng(1),
                                      class_counts=counts)
    out2, plain, rec2 = L.dualmix_replay(x_new, y_new, x_mem, y_mem, 4, rng=np.random.default_rng(1))
    assert torch.equal(rec.lam, rec2.lam) and torch.equal(out, out2)   # same draws, same images
    y = torch.cat([y_new, y_mem])
    lam_y = L.adaptive_label_ratio(rec.lam, counts[y], counts[y[rec.index]])
    for i in range(10):
        assert soft[i, y[i]] >= lam_y[i] - 1e-6 and soft[i].sum() == pytest.approx(1.0)
        assert plain[i, y[i]] >= rec.lam[i] - 1e-6
    new_rows = torch.arange(6)
    # a new-class row that keeps < tau of its pixels is labelled entirely as its old partner
    moved = new_rows[rec.lam[:6] < 0.5]
    assert len(moved) > 0 and bool((soft[moved].gather(1, y[moved, None]) == 0).all())
    with pytest.raises(DataError, match="class_counts"):
        L.dualmix_replay(x_new, y_new, x_mem, y_mem, num_classes=4, class_counts=torch.ones(3))
    with pytest.raises(DataError, match="class_counts"):
        L.adaptive_label_ratio(lam, n_own * 0, n_partner)
    with pytest.raises(ConfigError, match="kappa"):
        L.adaptive_label_ratio(lam, n_own, n_partner, kappa=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        L.dualmix_replay(x_new, y_new, x_mem, y_mem, num_classes=4, alpha=0.0)


def test_supremix_distance_weights() -> None:
    """Negatives enter the denominator as w exp(s / t), w = |y_i - y_n| / mean |y_i - y_n'|."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 4, dtype=D, generator=g).requires_grad_()
    y = torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 4.0], dtype=D)
    for hard in (True, False):
        assert gradcheck(lambda t, h=hard: L.supremix_loss(t, y, hard_pairs=h, distance_weight=True), (z,))
    # every negative at the same label distance: all weights are 1, the loss is unchanged
    # (with hard pairs the mixed negatives sit at half the distance: weights 4/3 and 2/3)
    y2 = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=D)
    torch.testing.assert_close(L.supremix_loss(z, y2, hard_pairs=False, distance_weight=True),
                               L.supremix_loss(z, y2, hard_pairs=False))
    from mixbatch.mixup.losses.contrastive import _negative_log_weights

    eye = torch.eye(6, dtype=torch.bool)
    same = (y2[:, None] == y2[None, :]) & ~eye
    w = _negative_log_weights(y2, same, eye, 0.5, 13).exp()
    neg = ~same & ~eye
    torch.testing.assert_close(w[:, :6][neg], torch.full((18,), 4 / 3, dtype=D))
    torch.testing.assert_close(w[:, 6:12][neg], torch.full((18,), 2 / 3, dtype=D))
    assert bool((w[:, :6][~neg] == 1).all()) and bool((w[:, 12] == 1).all())
    # by hand, plain SupCon part (hard_pairs off): anchor 0's only positive is row 1
    t = 0.1
    zn = F.normalize(z.detach(), dim=1)
    s = zn @ zn.T / t
    d = (y[0] - y).abs()
    neg = [2, 3, 4, 5]
    w = d[neg] / d[neg].mean()
    den = torch.exp(s[0, 1]) + (w * torch.exp(s[0, neg])).sum()
    per = L.supremix_loss(z.detach(), y, hard_pairs=False, distance_weight=True)
    manual0 = -(s[0, 1] - torch.log(den))
    # rebuild all anchors the same way and compare the mean
    total = []
    for i in range(6):
        pos = [k for k in range(6) if k != i and y[k] == y[i]]
        if not pos:
            continue
        ng = [k for k in range(6) if y[k] != y[i]]
        wi = (y[i] - y[ng]).abs() / (y[i] - y[ng]).abs().mean()
        den_i = torch.exp(s[i, pos]).sum() + (wi * torch.exp(s[i, ng])).sum()
        total.append(-(s[i, pos] - torch.log(den_i)).mean())
    assert total[0].item() == pytest.approx(manual0.item())
    torch.testing.assert_close(per, torch.stack(total).mean())
    # far negatives count more: the weighted loss differs from the unweighted one
    assert per.item() != pytest.approx(L.supremix_loss(z.detach(), y, hard_pairs=False).item())
