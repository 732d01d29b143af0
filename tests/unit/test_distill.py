"""Distillation loss against a hand-written computation; the teacher's top-k cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from warmstart.bench import distill as D
from warmstart.errors import WarmstartError


def _reference(student, targets, teacher, alpha, T):
    """Per position with plain Python floats: CE, KL(p_T || q_T), then the mix."""
    s, t = student.double().reshape(-1, student.shape[-1]).tolist(), teacher.double().reshape(-1, teacher.shape[-1])
    t = t.tolist()
    ys = targets.reshape(-1).tolist()
    ce = kl = 0.0
    for row_s, row_t, y in zip(s, t, ys):
        z = sum(math.exp(v) for v in row_s)
        ce += -(row_s[y] - math.log(z))
        zs = sum(math.exp(v / T) for v in row_s)
        zt = sum(math.exp(v / T) for v in row_t)
        for vs, vt in zip(row_s, row_t):
            p, q = math.exp(vt / T) / zt, math.exp(vs / T) / zs
            kl += p * math.log(p / q)
    n = len(ys)
    return alpha * ce / n + (1 - alpha) * T * T * kl / n, ce / n, kl / n


@pytest.mark.parametrize("alpha,T", [(0.0, 1.0), (0.5, 2.0), (1.0, 1.0), (0.3, 0.7)])
def test_loss_with_full_teacher_matches_hand_computation(alpha, T):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 11, generator=g) * 2, torch.randn(2, 3, 11, generator=g) * 2
    y = torch.randint(0, 11, (2, 3), generator=g)
    loss, ce, kl = D.distill_loss(s, y, t, alpha=alpha, temperature=T)
    want, want_ce, want_kl = _reference(s, y, t, alpha, T)
    assert abs(float(loss) - want) < 1e-5 and abs(float(ce) - want_ce) < 1e-5 and abs(float(kl) - want_kl) < 1e-5


def test_top_k_with_the_whole_vocabulary_is_exact_and_smaller_k_renormalizes():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g) * 3
    y = torch.randint(0, 9, (4,), generator=g)
    full = D.distill_loss(s, y, t, alpha=0.2, temperature=1.5)[0]
    assert abs(float(D.distill_loss(s, y, D.top_k(t, 9), alpha=0.2, temperature=1.5)[0] - full)) < 1e-6
    # k = 3: the teacher's mass on its 3 largest logits, renormalized; the student's full log-softmax there.
    k = 3
    got = D.distill_loss(s, y, D.top_k(t, k), alpha=0.0, temperature=1.0)[0]
    kl = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist()):
        ids = sorted(range(9), key=lambda i: -row_t[i])[:k]
        zt = sum(math.exp(row_t[i]) for i in ids)
        zs = sum(math.exp(v) for v in row_s)
        for i in ids:
            p = math.exp(row_t[i]) / zt
            kl += p * (math.log(p) - (row_s[i] - math.log(zs)))
    assert abs(float(got) - kl / 4) < 1e-5


def test_gradient_of_the_soft_term_is_q_minus_p():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 7, generator=g).requires_grad_()
    t = torch.randn(5, 7, generator=g)
    D.distill_loss(s, torch.zeros(5, dtype=torch.long), t, alpha=0.0, temperature=1.0)[0].backward()
    assert torch.allclose(s.grad, (s.softmax(-1) - t.softmax(-1)).detach() / 5, atol=1e-6)


def test_bad_settings_are_refused():
    s, y = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(WarmstartError):
        D.distill_loss(s, y, s, alpha=1.5)
    with pytest.raises(WarmstartError):
        D.distill_loss(s, y, s, temperature=0)


@pytest.fixture
def teacher(tmp_path):
    from tests.conftest import build_tiny

    return build_tiny("llama", tmp_path / "teacher")


def _tokens(n=200, vocab=128):
    return np.random.default_rng(0).integers(0, vocab, size=n).astype(np.uint16)


def test_teacher_cache_holds_the_teachers_top_k_and_is_reused(teacher, tmp_path):
    import transformers as tf

    tokens = _tokens()
    cache = D.teacher_cache(teacher, tokens, seq_len=16, k=5, windows=6, root=tmp_path / "cache", batch_size=4)
    lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    x, y, tk = cache.window_batch(tokens, [1, 4])
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor(np.stack([tokens[16:32], tokens[64:80]]).astype(np.int64))).logits
    want = logits.topk(5, dim=-1)
    assert torch.equal(tk.indices, want.indices)
    assert torch.allclose(tk.values, want.values, atol=2e-3)  # stored as float16
    assert torch.equal(y, torch.tensor(np.stack([tokens[17:33], tokens[65:81]]).astype(np.int64)))
    assert torch.equal(x[:, 1:], y[:, :-1])

    class NoTeacher:
        def __call__(self, **kw):
            raise AssertionError("the cache was recomputed")

    again = D.teacher_cache(teacher, tokens, seq_len=16, k=5, windows=6, root=tmp_path / "cache", lm=NoTeacher())
    assert again.path == cache.path
    # A different k is a different cache.
    other = D.teacher_cache(teacher, tokens, seq_len=16, k=3, windows=6, root=tmp_path / "cache", lm=lm)
    assert other.path != cache.path


def test_interrupted_cache_build_leaves_nothing_half_written(teacher, tmp_path):
    import transformers as tf

    lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    calls = []

    class Dies:
        config = lm.config

        def __call__(self, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return lm(**kw)

    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        D.teacher_cache(teacher, _tokens(), seq_len=16, k=5, windows=6, root=root, batch_size=2, lm=Dies())
    assert list(root.iterdir()) == []
    cache = D.teacher_cache(teacher, _tokens(), seq_len=16, k=5, windows=6, root=root, batch_size=2, lm=lm)
    assert cache.values.shape == (6, 16, 5)


def test_teacher_with_another_tokenizer_is_refused(tmp_path):
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    def save(path, words):
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(str(path))

    save(tmp_path / "a", ["<unk>", "a", "b"])
    save(tmp_path / "b", ["<unk>", "a", "c"])
    save(tmp_path / "c", ["<unk>", "a", "b"])
    D.check_same_tokenizer(tmp_path / "a", tmp_path / "c")
    with pytest.raises(WarmstartError, match="tokenizer differs"):
        D.check_same_tokenizer(tmp_path / "a", tmp_path / "b")


def test_perp_trains_only_norms_and_biases(teacher):
    import transformers as tf

    lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher))
    n = D.only_norms_and_biases(lm)
    trainable = [name for name, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("norm" in name for name in trainable)
    assert n == sum(p.numel() for name, p in lm.named_parameters() if "norm" in name)
    assert D.teacher_flops(1000, 50) == 100000.0
