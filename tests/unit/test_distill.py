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


# -- the training mode -------------------------------------------------------------------
STUDENT = dict(model_type="llama", vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)


def _train(tmp_path, name, distiller, tokens, steps=2, **kw):
    from warmstart.bench.train import train

    return train(dict(STUDENT), tokens, tokens, out_dir=tmp_path / name, steps=steps, batch_size=4, seq_len=16,
                 lr=1e-3, eval_every=100, eval_batches=1, progress=False, save_final=False, distill=distiller,
                 cpu=True, **kw)


def test_training_with_cached_teacher_logs_the_distillation_loss_and_teacher_flops(teacher, tmp_path):
    import transformers as tf

    from warmstart.bench.train import build_model, read_log

    tokens = _tokens(400)
    lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
    cache = D.teacher_cache(teacher, tokens, seq_len=16, k=128, root=tmp_path / "cache", lm=lm)
    n_teacher = sum(p.numel() for p in lm.parameters())
    dist = D.Distiller(alpha=0.3, temperature=2.0, cache=cache, teacher_params=n_teacher)
    result = _train(tmp_path, "run", dist, tokens)
    rows = [r for r in read_log(result.log_path) if r["step"] > 0]
    assert [r["teacher_flops"] for r in rows] == [2.0 * n_teacher * 64 * s for s in (1, 2)]
    assert result.teacher_flops == 2.0 * n_teacher * 128
    # Step 1's loss, by hand: the same aligned windows, the live teacher, the fresh student.
    ids = np.random.default_rng([0, 0]).integers(0, cache.windows, size=4)
    win = torch.tensor(np.stack([tokens[c * 16:c * 16 + 17] for c in ids]).astype(np.int64))
    x, y = win[:, :-1], win[:, 1:]
    student = build_model(dict(STUDENT), 0)
    with torch.no_grad():
        s, t = student(input_ids=x).logits.reshape(-1, 128), lm(input_ids=x).logits.reshape(-1, 128)
    p, log_q = (t / 2).softmax(-1), (s / 2).log_softmax(-1)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    ce = -s.log_softmax(-1).gather(1, y.reshape(-1, 1)).mean()
    assert abs(rows[0]["train_loss"] - float(0.3 * ce + 0.7 * 4 * kl)) < 2e-3


def test_live_teacher_and_resume(teacher, tmp_path):
    import transformers as tf

    from warmstart.bench.train import read_log

    tokens = _tokens(400)
    lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32)
    whole = _train(tmp_path, "whole", D.Distiller(teacher=lm), tokens, steps=4)

    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "cut", D.Distiller(teacher=lm), tokens, steps=4, checkpoint_every=2, on_step=stop)
    resumed = _train(tmp_path, "cut", D.Distiller(teacher=lm), tokens, steps=4, checkpoint_every=2, resume=True)
    assert resumed.resumed_from == 2
    a = [r["train_loss"] for r in read_log(whole.log_path) if r["step"] > 0]
    b = [r["train_loss"] for r in read_log(resumed.log_path) if r["step"] > 0]
    assert len(b) == 4 and np.allclose(a, b, rtol=1e-5)


def test_cache_of_other_tokens_is_refused(teacher, tmp_path):
    tokens = _tokens(400)
    cache = D.teacher_cache(teacher, tokens, seq_len=16, k=4, root=tmp_path / "cache")
    other = tokens.copy()
    other[5] = (other[5] + 1) % 128
    with pytest.raises(WarmstartError, match="other tokens"):
        _train(tmp_path, "x", D.Distiller(cache=cache, teacher_params=1), other)
    with pytest.raises(WarmstartError, match="windows of 16"):
        from warmstart.bench.train import train

        train(dict(STUDENT), tokens, None, out_dir=tmp_path / "y", steps=1, batch_size=4, seq_len=8,
              progress=False, distill=D.Distiller(cache=cache, teacher_params=1), cpu=True)
