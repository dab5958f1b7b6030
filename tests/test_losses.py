"""Each loss against a hand computation, the objective's weights and denominators, and the gradient flow of
METHOD.md section 4."""
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from engine.train import lr_at, step_losses
from losses import SBKAObjective, gaussian_prior_kl, seen_class_cross_entropy, semantic_soft_cross_entropy
from models import build_student, build_teacher


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_semantic_soft_cross_entropy_by_hand_photos_only_with_mask():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [3.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    is_photo = torch.tensor([1.0, 0.0, 1.0])  # the middle sample is a sketch: it must not count
    expected = 0.0
    for i in (0, 2):
        p = _softmax([t[i, c].item() + 0.3 * m[i, c].item() for c in range(3)])
        logq = [math.log(q) for q in _softmax(s[i].tolist())]
        expected += -sum(pc * lc for pc, lc in zip(p, logq))
    expected /= 2
    got = semantic_soft_cross_entropy(s, t, is_photo, m)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # without a mask (QuickDraw) the bias term disappears, the photo masking stays
    p0 = _softmax(t[0].tolist())
    logq0 = [math.log(q) for q in _softmax(s[0].tolist())]
    only_first = semantic_soft_cross_entropy(s, t, torch.tensor([1.0, 0.0, 0.0]))
    assert only_first.item() == pytest.approx(-sum(a * b for a, b in zip(p0, logq0)), rel=1e-6)


def test_soft_cross_entropy_without_photos_is_zero():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    assert semantic_soft_cross_entropy(s, t, torch.zeros(3)).item() == 0.0


def test_gaussian_prior_kl_by_hand():
    f = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(f.shape, generator=torch.Generator().manual_seed(5))
    got = gaussian_prior_kl(f, generator=gen)
    expected = 0.0
    for i in range(2):
        p = _softmax(z[i].tolist())
        q = _softmax(f[i].tolist())
        expected += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)
    assert torch.allclose(got, F.kl_div(F.log_softmax(f, 1), F.softmax(z, 1), reduction="batchmean"))


@pytest.mark.parametrize("epoch,expected", [(0, 1e-4), (5, 1e-4 * 0.001 ** 0.25), (10, 1e-4 * 0.001 ** 0.5),
                                            (19, 1e-4 * 0.001 ** 0.95)])
def test_lr_schedule(epoch, expected):
    assert lr_at(1e-4, epoch, 20) == pytest.approx(expected, rel=1e-12)
    assert lr_at(5e-5, epoch, 20) == pytest.approx(expected / 2, rel=1e-12)  # TU-Berlin teacher


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    student = build_student("convnextv2_atto", 3)
    teacher = build_teacher("convnextv2_atto")
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    is_photo = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    cid_mask = torch.rand(3, 1000)   # one row per seen class
    return student, teacher, x, y, is_photo, cid_mask


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def _student_grad(tiny, bidirectional, detach, only_student_terms=False):
    student, teacher, x, y, is_photo, mask = tiny
    torch.manual_seed(1)  # same prior noise every call
    total, terms = step_losses(student, teacher, SBKAObjective(detach_reverse_target=detach), x, y, is_photo, mask,
                               bidirectional, nullcontext())
    if only_student_terms:
        total = terms["loss_ce"] + terms["loss_kd"] + 0.1 * terms["loss_prior"]
    g = _grads(student, total)
    return torch.cat([t.flatten() for t in g if t is not None]), total, terms


def test_student_gradient_contains_reverse_term_by_default(tiny):
    g_faithful, _, terms = _student_grad(tiny, True, False)
    g_student_only, _, _ = _student_grad(tiny, True, False, only_student_terms=True)
    g_detached, _, _ = _student_grad(tiny, True, True)
    assert "loss_reverse" in terms
    assert not torch.allclose(g_faithful, g_student_only, atol=1e-9)
    assert torch.allclose(g_detached, g_student_only, rtol=1e-5, atol=1e-9)


def test_teacher_head_gradient_is_that_of_the_reverse_loss_only(tiny):
    student, teacher, x, y, is_photo, mask = tiny
    torch.manual_seed(1)
    total, terms = step_losses(student, teacher, SBKAObjective(), x, y, is_photo, mask, True, nullcontext())
    head = teacher.head_parameters()
    g_total = torch.autograd.grad(total, head, retain_graph=True)
    g_rev = torch.autograd.grad(terms["loss_reverse"], head, retain_graph=True)
    for a, b in zip(g_total, g_rev):
        assert torch.allclose(a, b, atol=1e-9)
    assert any(p.requires_grad for p in head)
    assert not any(p.requires_grad for n, p in teacher.backbone.named_parameters() if not n.startswith("head.fc"))


def test_warmup_gives_the_teacher_no_graph(tiny):
    student, teacher, x, y, is_photo, mask = tiny
    total, terms = step_losses(student, teacher, SBKAObjective(), x, y, is_photo, mask, False, nullcontext())
    assert "loss_reverse" not in terms
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)


def _outputs(seed=0, n=6, seen=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, seen, generator=g), torch.randn(n, 1000, generator=g), torch.randn(n, dim, generator=g))
    teacher = torch.randn(n, 1000, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2][:n])
    is_photo = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0][:n])
    return student, teacher, y, is_photo, torch.rand(seen, 1000, generator=g)


def _objective(objective, outputs, bidirectional=True, **counts):
    torch.manual_seed(7)   # the same prior noise for every call
    return objective(*outputs, bidirectional, **counts)


def test_default_objective_is_the_released_formula_bit_for_bit():
    outputs = _outputs()
    (seen, imagenet, feature), teacher, y, is_photo, cid_mask = outputs
    total, terms = _objective(SBKAObjective(), outputs)
    torch.manual_seed(7)
    prior = F.kl_div(F.log_softmax(feature, 1), F.softmax(torch.randn(feature.shape), 1), reduction="batchmean")
    ce = F.cross_entropy(seen, y)
    kd = semantic_soft_cross_entropy(imagenet, teacher, is_photo, cid_mask[y], 0.3)
    reverse = semantic_soft_cross_entropy(teacher, imagenet, is_photo, cid_mask[y], 0.3)
    assert torch.equal(terms["loss_ce"], ce) and torch.equal(terms["loss_prior"], prior)
    assert torch.equal(terms["loss_kd"], kd) and torch.equal(terms["loss_reverse"], reverse)
    assert torch.equal(total, ce + kd + 0.1 * prior + reverse)
    warm_total, warm_terms = _objective(SBKAObjective(), outputs, bidirectional=False)
    assert "loss_reverse" not in warm_terms and torch.equal(warm_total, ce + kd + 0.1 * prior)


def test_prior_weight_and_semantic_bias_flags():
    outputs = _outputs()
    (seen, imagenet, feature), teacher, y, is_photo, cid_mask = outputs
    total, terms = _objective(SBKAObjective(prior_weight=0.0), outputs)
    assert torch.equal(total, terms["loss_ce"] + terms["loss_kd"] + terms["loss_reverse"])
    assert terms["loss_prior"] > 0 and not terms["loss_prior"].requires_grad   # measured, not trained on
    doubled, doubled_terms = _objective(SBKAObjective(prior_weight=0.2), outputs)
    assert doubled.item() == pytest.approx(total.item() + 0.2 * doubled_terms["loss_prior"].item(), rel=1e-6)
    _, no_bias = _objective(SBKAObjective(semantic_bias=0.0), outputs)
    _, no_mask = _objective(SBKAObjective(), (outputs[0], teacher, y, is_photo, None))
    _, biased = _objective(SBKAObjective(semantic_bias=0.5), outputs)
    for term in ("loss_kd", "loss_reverse"):
        assert torch.equal(no_bias[term], no_mask[term])
        assert torch.equal(biased[term], semantic_soft_cross_entropy(
            *((imagenet, teacher) if term == "loss_kd" else (teacher, imagenet)), is_photo, cid_mask[y], 0.5))
        assert not torch.equal(biased[term], no_bias[term])


def test_detached_reverse_target_keeps_the_student_out_of_the_reverse_term():
    (seen, imagenet, feature), teacher, y, is_photo, cid_mask = _outputs()
    imagenet.requires_grad_(True)
    teacher.requires_grad_(True)
    for detach in (False, True):
        _, terms = _objective(SBKAObjective(detach_reverse_target=detach),
                              ((seen, imagenet, feature), teacher, y, is_photo, cid_mask))
        g_student, g_teacher = torch.autograd.grad(terms["loss_reverse"], (imagenet, teacher), allow_unused=True)
        assert (g_student is None) == detach and g_teacher is not None


def test_denominators_default_to_local_counts_and_may_be_given():
    outputs = _outputs()
    _, local = _objective(SBKAObjective(), outputs)
    _, given = _objective(SBKAObjective(), outputs, samples=6, photos=torch.tensor(4.0))
    _, global_ = _objective(SBKAObjective(), outputs, samples=12, photos=8)
    for name in local:
        assert torch.equal(local[name], given[name]), name   # the local counts, bit for bit
        torch.testing.assert_close(global_[name], local[name] / 2)
    seen, y = outputs[0][0], outputs[2]
    assert torch.equal(seen_class_cross_entropy(seen, y), F.cross_entropy(seen, y))
