"""Oracles: real torch / TorchScript / ONNX models agree, and every check bites."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from tracemark.errors import BudgetExceededError, TracemarkError
from tracemark.oracle import (
    CallableOracle,
    GaussianNoise,
    LabelOnly,
    OnnxOracle,
    Oracle,
    Response,
    TopK,
    TorchModuleOracle,
    TorchScriptOracle,
    load_oracle,
)

torch = pytest.importorskip("torch")

H, W, C, K = 4, 4, 3, 5


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, H, W, C), dtype=np.float32)


def tiny_model() -> torch.nn.Module:
    """Flatten + Linear with fixed weights large enough to give confident, distinct answers."""
    rng = np.random.default_rng(42)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(rng.normal(0, 1, (K, C * H * W))))
        model[1].bias.copy_(torch.from_numpy(rng.normal(0, 1, K)))
    return model


def reference_probs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Softmax of the tiny model's logits, computed in numpy from its weights."""
    w = model[1].weight.detach().numpy().astype(np.float64)
    b = model[1].bias.detach().numpy().astype(np.float64)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1).astype(np.float64)
    return scipy_softmax(flat @ w.T + b, axis=1)


def export_onnx(model: torch.nn.Module, path, dynamic: bool = True, batch: int = 1) -> None:
    kwargs = {"dynamic_axes": {"input": {0: "n"}, "output": {0: "n"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(batch, C, H, W),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            **kwargs,
        )


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model().eval()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.zeros(1, C, H, W))
        torch.jit.save(traced, str(root / "model.pt"))
    export_onnx(model, root / "model.onnx")
    export_onnx(model, root / "fixed4.onnx", dynamic=False, batch=4)
    (root / "garbage.bin").write_bytes(b"this is not a model\n" * 10)
    (root / "garbage.onnx").write_bytes(b"this is not a model\n" * 10)
    return root


class Recorder:
    """A model function that records what it was asked; returns fixed outputs."""

    def __init__(self, fn):
        self.fn = fn
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        return self.fn(x)


def linear_logits(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    w = np.random.default_rng(1).normal(0, 1, (flat.shape[1], K))
    return flat @ w


def as_probs(x: np.ndarray) -> np.ndarray:
    return scipy_softmax(linear_logits(x), axis=1)


# --- real models: torch module, TorchScript and ONNX agree -------------------------------


def test_torch_torchscript_onnx_agree(model, files):
    x = images(37)
    expected = reference_probs(model, x)
    oracles = [
        TorchModuleOracle(model, device="cpu"),
        TorchModuleOracle(model, device="cpu", channels_last=False),
        TorchScriptOracle(files / "model.pt", device="cpu"),
        OnnxOracle(files / "model.onnx"),
    ]
    for oracle in oracles:
        r = oracle.query(x)
        assert r.mode == "probabilities" and r.softmax_applied
        assert r.num_classes == oracle.num_classes == K
        assert r.probs.dtype == np.float64 and r.probs.shape == (37, K)
        np.testing.assert_allclose(r.probs, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r.probs.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(r.top1(), expected.argmax(axis=1))
        assert oracle.queries == 37
    assert len(set(expected.argmax(axis=1))) > 1  # the check above is not trivial


def test_batching_gives_same_answer_and_counts_every_image(model):
    x = images(10)
    fn = Recorder(as_probs)
    small = CallableOracle(fn, batch_size=3)
    r = small.query(x)
    # ceil(10 / 3) = 4 batches of near-equal size, never a tiny tail (balanced_batches)
    assert fn.batches == [2, 3, 3, 2]
    assert small.queries == 10
    big = CallableOracle(as_probs).query(x)
    np.testing.assert_allclose(r.probs, big.probs, atol=1e-12)
    np.testing.assert_array_equal(r.labels, big.labels)
    small.query(x[:4])
    assert small.queries == 14 and fn.batches[-2:] == [2, 2]
    torch_small = TorchModuleOracle(model, device="cpu", batch_size=4).query(x)
    torch_big = TorchModuleOracle(model, device="cpu").query(x)
    np.testing.assert_allclose(torch_small.probs, torch_big.probs, atol=1e-6)


def test_onnx_fixed_batch_size_is_padded_but_not_counted(model, files):
    oracle = OnnxOracle(files / "fixed4.onnx")
    x = images(6)
    r = oracle.query(x)
    assert oracle.queries == 6 and len(r) == 6
    np.testing.assert_allclose(r.probs, reference_probs(model, x), atol=1e-5)


def test_torch_oracle_leaves_callers_module_untouched(model):
    m = tiny_model()  # in training mode
    before = m[1].weight.detach().clone()
    oracle = TorchModuleOracle(m, device="cpu")
    oracle.query(images(3))
    assert m.training and oracle.module is not m and not oracle.module.training
    assert torch.equal(m[1].weight, before)
    ready = tiny_model().eval()
    assert TorchModuleOracle(ready, device="cpu").module is ready  # nothing to change: no copy


def test_torch_oracle_handles_view_modules_and_bad_outputs():
    class ViewNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = tiny_model()[1]

        def forward(self, x):
            return self.fc(x.view(x.shape[0], -1))  # needs contiguous NCHW input

    net = ViewNet().eval()
    x = images(5)
    r = TorchModuleOracle(net, device="cpu").query(x)
    np.testing.assert_allclose(r.probs, reference_probs(tiny_model(), x), atol=1e-5)

    class TupleNet(torch.nn.Module):
        def forward(self, x):
            return (x.flatten(1)[:, :3],)

    with pytest.raises(TracemarkError, match=r"not a tensor"):
        TorchModuleOracle(TupleNet(), device="cpu").query(x)
    with pytest.raises(TracemarkError, match=r"torch.nn.Module"):
        TorchModuleOracle(lambda v: v, device="cpu")
    with pytest.raises(TracemarkError, match=r"failed on a batch of shape \(5, 4, 4, 1\)"):
        TorchModuleOracle(tiny_model(), device="cpu").query(x[..., :1])


def test_onnx_input_mismatch_is_explained(files):
    oracle = OnnxOracle(files / "model.onnx")
    with pytest.raises(TracemarkError, match=r"expects \(N=n, C=3, H=4, W=4\).*C=1"):
        oracle.query(images(2)[..., :1])
    with pytest.raises(TracemarkError, match=r"H=4"):
        oracle.query(np.zeros((2, 5, 4, 3), np.float32))
    with pytest.raises(TracemarkError, match=r"layout='NCHW'"):
        OnnxOracle(files / "model.onnx", layout="NHWC").query(images(2))
    with pytest.raises(TracemarkError, match=r"layout must be"):
        OnnxOracle(files / "model.onnx", layout="CHW")


# --- budget --------------------------------------------------------------------------------


def test_budget_is_checked_before_anything_is_queried():
    fn = Recorder(as_probs)
    oracle = CallableOracle(fn, budget=10, batch_size=4)
    oracle.query(images(6))
    with pytest.raises(BudgetExceededError, match=r"6 of 10 queries used.*5 more asked.*4 left"):
        oracle.query(images(5))
    assert oracle.queries == 6 and sum(fn.batches) == 6  # refused outright, nothing sent
    assert oracle.remaining == 4
    oracle.query(images(4))
    assert oracle.queries == 10 and oracle.remaining == 0
    with pytest.raises(BudgetExceededError):
        LabelOnly(oracle).query(images(1))  # wrappers spend the inner budget
    assert isinstance(BudgetExceededError("x"), TracemarkError)


def test_empty_query_asks_nothing():
    fn = Recorder(as_probs)
    oracle = CallableOracle(fn, budget=0)
    r = oracle.query(np.zeros((0, H, W, C), np.float32))
    assert len(r) == 0 and fn.batches == [] and oracle.queries == 0
    oracle = CallableOracle(as_probs, num_classes=K)
    r = oracle.query(np.zeros((0, H, W, C), np.float32))
    assert r.labels.shape == (0, K) and r.probs.shape == (0, K)
    assert len(TopK(oracle, 2).query(np.zeros((0, H, W, C), np.float32))) == 0


def test_constructor_arguments_are_checked():
    for kwargs, text in [
        ({"budget": -1}, "budget"),
        ({"batch_size": 0}, "batch_size"),
        ({"outputs": "softmax"}, "outputs must be one of"),
        ({"num_classes": 1}, "num_classes"),
    ]:
        with pytest.raises(TracemarkError, match=text):
            CallableOracle(as_probs, **kwargs)
    with pytest.raises(TracemarkError, match=r"needs a function"):
        CallableOracle(42)


# --- input validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        (np.full((2, H, W, C), 1.5, np.float32), r"\[0, 1\].*max 1.5.*1/255"),
        (np.full((2, H, W, C), -0.1, np.float32), r"\[0, 1\].*min -0.1"),
        (np.full((2, H, W, C), np.nan, np.float32), "NaN"),
        (np.full((2, H, W, C), np.inf, np.float32), r"\[0, 1\]"),
        (np.zeros((H, W, C), np.float32), r"4-D.*images\[None\]"),
        (np.zeros((2, H, W), np.float32), "4-D"),
        (np.zeros((2, H, W, C), np.uint8), "astype"),
        ([[[[0.5]]]], "numpy array"),
    ],
)
def test_bad_images_are_refused_before_querying(bad, text):
    fn = Recorder(as_probs)
    oracle = CallableOracle(fn)
    with pytest.raises(TracemarkError, match=text):
        oracle.query(bad)
    assert fn.batches == [] and oracle.queries == 0


def test_float64_images_are_accepted_as_float32():
    seen = []
    CallableOracle(lambda x: seen.append(x.dtype) or as_probs(x)).query(images(2).astype(float))
    assert seen == [np.float32]


# --- output validation -----------------------------------------------------------------------


def _const(out):
    return lambda x: np.broadcast_to(np.asarray(out, dtype=float), (len(x), len(out)))


@pytest.mark.parametrize(
    ("fn", "kwargs", "text"),
    [
        (lambda x: np.zeros(len(x)), {}, r"shape \(3,\) for 3 images; expected \(3, num_classes\)"),
        (lambda x: np.zeros((len(x) + 1, K)), {}, r"shape \(4, 5\) for 3 images"),
        (lambda x: np.zeros((len(x), K, 1)), {}, "expected"),
        (lambda x: np.zeros((len(x), 1)), {}, "at least 2"),
        (lambda x: np.zeros((len(x), 4)), {"num_classes": K}, "4 scores.*num_classes=5"),
        (_const([0.1, np.nan, 0.2]), {}, "non-finite.*NaN or inf"),
        (_const([0.1, np.inf, 0.2]), {"outputs": "logits"}, "non-finite"),
        (_const([-0.2, 0.6, 0.6]), {"outputs": "probabilities"}, "outside \\[0, 1\\].*'logits'"),
        (_const([0.2, 0.3, 0.4]), {"outputs": "probabilities"}, "sums to 0.9.*'logits'"),
        (lambda x: [["a", "b"]] * len(x), {}, "not numeric"),
    ],
)
def test_bad_outputs_are_errors(fn, kwargs, text):
    with pytest.raises(TracemarkError, match=text):
        CallableOracle(fn, **kwargs).query(images(3))


def test_column_count_must_stay_the_same():
    cols = iter([3, 4])
    oracle = CallableOracle(lambda x: np.zeros((len(x), next(cols))))
    oracle.query(images(2))
    assert oracle.num_classes == 3
    with pytest.raises(TracemarkError, match=r"4 scores.*num_classes=3"):
        oracle.query(images(2))


def test_model_exceptions_are_wrapped_but_tracemark_errors_pass():
    def boom(x):
        raise ValueError("boom")

    with pytest.raises(TracemarkError, match=r"failed on a batch of shape \(2, 4, 4, 3\).*boom"):
        CallableOracle(boom).query(images(2))
    own = TracemarkError("mine")

    def raise_own(x):
        raise own

    with pytest.raises(TracemarkError) as info:
        CallableOracle(raise_own).query(images(2))
    assert info.value is own


def test_torch_tensor_outputs_from_a_callable_are_accepted():
    t = torch.nn.Linear(C * H * W, K)
    r = CallableOracle(lambda x: t(torch.from_numpy(x).flatten(1))).query(images(3))
    assert r.probs.shape == (3, K)


# --- probabilities, logits and auto ----------------------------------------------------------


def test_logits_get_a_stable_softmax():
    big = lambda x: linear_logits(x) * 1000  # noqa: E731 - overflows a naive softmax
    r = CallableOracle(big, outputs="logits").query(images(4))
    assert r.softmax_applied and np.isfinite(r.probs).all()
    np.testing.assert_allclose(r.probs, scipy_softmax(big(images(4)), axis=1), atol=1e-12)
    # "logits" is obeyed even when the outputs happen to look like probabilities
    r = CallableOracle(as_probs, outputs="logits").query(images(4))
    np.testing.assert_allclose(r.probs, scipy_softmax(as_probs(images(4)), axis=1))


def test_probabilities_are_renormalised_exactly():
    def slightly_off(x):
        p = as_probs(x) * (1 + 5e-4)
        p[:, 0] += 1e-7  # float32-style rounding just outside [0, 1] is tolerated too
        return p.astype(np.float32)

    oracle = CallableOracle(slightly_off, outputs="probabilities")
    r = oracle.query(images(5))
    assert not r.softmax_applied and oracle.output_kind == "probabilities"
    np.testing.assert_allclose(r.probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(r.probs, as_probs(images(5)), atol=1e-5)


def test_auto_decides_at_the_first_answer_and_sticks_to_it():
    answers = iter([as_probs, linear_logits])
    oracle = CallableOracle(lambda x: next(answers)(x), batch_size=2)
    assert oracle.output_kind is None
    r = oracle.query(images(2))
    assert not r.softmax_applied and oracle.output_kind == "probabilities"
    np.testing.assert_allclose(r.probs, as_probs(images(2)))
    with pytest.raises(TracemarkError, match=r"first answer looked like probabilities.*'logits'"):
        oracle.query(images(2))

    answers = iter([linear_logits, as_probs])
    oracle = CallableOracle(lambda x: next(answers)(x))
    assert oracle.query(images(2)).softmax_applied and oracle.output_kind == "logits"
    r = oracle.query(images(2))  # probability-like now, but still treated as logits
    assert r.softmax_applied
    np.testing.assert_allclose(r.probs, scipy_softmax(as_probs(images(2)), axis=1))


# --- Response ---------------------------------------------------------------------------------


def test_response_ranks_and_probabilities():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    r = Response.from_probabilities(probs)
    np.testing.assert_array_equal(r.labels, [[1, 2, 0], [0, 2, 1]])
    np.testing.assert_array_equal(r.top1(), [1, 0])
    np.testing.assert_allclose(r.prob_of(2), [0.3, 0.3])
    np.testing.assert_allclose(r.prob_of(np.array([0, 1])), [0.1, 0.2])
    np.testing.assert_array_equal(r.rank_of(0), [3, 1])
    np.testing.assert_array_equal(r.rank_of(np.array([2, 1])), [2, 3])
    np.testing.assert_allclose(r.scores, [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]])
    assert len(r) == 2 and r.labels.dtype == np.int64
    with pytest.raises(TracemarkError, match=r"in \[0, 3\)"):
        r.prob_of(3)
    with pytest.raises(TracemarkError, match=r"one class per image"):
        r.rank_of(np.array([0, 1, 2]))
    ties = Response.from_probabilities(np.array([[0.25, 0.25, 0.5]]))
    np.testing.assert_array_equal(ties.labels, [[2, 0, 1]])  # ties by class index


def test_response_take_and_concat():
    r = Response.from_probabilities(as_probs(images(6)))
    part = r.take([4, 1])
    np.testing.assert_array_equal(part.labels, r.labels[[4, 1]])
    np.testing.assert_allclose(part.probs, r.probs[[4, 1]])
    assert len(r.take(3)) == 1 and len(r.take(slice(1, 4))) == 3
    assert len(r.take(np.arange(6) % 2 == 0)) == 3
    whole = Response.concat([r.take(slice(0, 2)), r.take(slice(2, 2)), r.take(slice(2, 6))])
    np.testing.assert_allclose(whole.probs, r.probs)
    np.testing.assert_array_equal(whole.labels, r.labels)
    top = Response("topk", r.labels[:, :2], None, None, K)
    with pytest.raises(TracemarkError, match=r"cannot concatenate"):
        Response.concat([r, top])
    with pytest.raises(TracemarkError, match=r"at least one"):
        Response.concat([])
    with pytest.raises(TracemarkError, match=r"reveals no probabilities"):
        Response("label", r.labels[:, :1], r.probs, None, K)


# --- restricted access -------------------------------------------------------------------------


@pytest.fixture
def full():
    return CallableOracle(as_probs)


def test_topk_reveals_only_the_best_k(full):
    x = images(20)
    base = Response.from_probabilities(as_probs(x))
    oracle = TopK(full, 2)
    r = oracle.query(x)
    assert r.mode == "topk" and r.probs is None and r.labels.shape == (20, 2)
    np.testing.assert_array_equal(r.labels, base.labels[:, :2])
    np.testing.assert_allclose(r.scores, base.scores[:, :2])
    for y in range(K):  # rank within the top 2, else k + 1 = 3
        expected = np.where(base.rank_of(y) <= 2, base.rank_of(y), 3)
        np.testing.assert_array_equal(r.rank_of(y), expected)
    assert (r.rank_of(base.labels[:, -1]) == 3).all()
    np.testing.assert_array_equal(r.top1(), base.top1())
    with pytest.raises(TracemarkError, match=r"probabilities are not available.*top-k"):
        r.prob_of(0)
    assert TopK(full, 3, with_scores=False).query(x).scores is None
    assert oracle.queries == full.queries == 40 and oracle.num_classes == K


def test_restrictions_compose_and_only_ever_narrow(full):
    x = images(8)
    narrower = TopK(TopK(full, 3), 2).query(x)
    np.testing.assert_array_equal(narrower.labels, TopK(full, 2).query(x).labels)
    with pytest.raises(TracemarkError, match=r"top 3.*only its top 2"):
        TopK(TopK(full, 2), 3).query(x)
    with pytest.raises(TracemarkError, match=r"label-only"):
        TopK(LabelOnly(full), 1).query(x)
    with pytest.raises(TracemarkError, match=r"no scores"):
        TopK(TopK(full, 3, with_scores=False), 2).query(x)
    assert TopK(TopK(full, 3, with_scores=False), 2, with_scores=False).query(x).k == 2
    with pytest.raises(TracemarkError, match=r"exceeds the model's 5 classes"):
        TopK(full, 6)
    with pytest.raises(TracemarkError, match=r"cannot reveal the top 6"):
        TopK(CallableOracle(as_probs), 6).query(x)  # classes unknown until the first answer
    with pytest.raises(TracemarkError, match=r"positive int"):
        TopK(full, 0)
    with pytest.raises(TracemarkError, match=r"wraps an Oracle"):
        LabelOnly(as_probs)


def test_label_only(full):
    x = images(10)
    oracle = LabelOnly(TopK(full, 3))
    r = oracle.query(x)
    assert r.mode == "label" and r.labels.shape == (10, 1) and r.scores is None
    np.testing.assert_array_equal(r.top1(), as_probs(x).argmax(axis=1))
    np.testing.assert_array_equal(r.rank_of(r.top1()), 1)
    np.testing.assert_array_equal(r.rank_of((r.top1() + 1) % K), 2)
    with pytest.raises(TracemarkError, match=r"only its top-1 label"):
        r.prob_of(0)
    assert isinstance(oracle, Oracle) and oracle.queries == 10


def test_gaussian_noise_is_reproducible_and_valid(full):
    x = images(50)
    a = GaussianNoise(full, 0.05, np.random.default_rng(3)).query(x)
    b = GaussianNoise(full, 0.05, np.random.default_rng(3)).query(x)
    c = GaussianNoise(full, 0.05, np.random.default_rng(4)).query(x)
    np.testing.assert_array_equal(a.probs, b.probs)
    assert not np.allclose(a.probs, c.probs)
    assert a.mode == "probabilities" and (a.probs >= 0).all()
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0, atol=1e-12)
    clean = as_probs(x)
    assert 0.005 < np.abs(a.probs - clean).mean() < 0.1
    same = GaussianNoise(full, 0.0, np.random.default_rng(0)).query(x)
    np.testing.assert_allclose(same.probs, clean, atol=1e-12)

    logit = GaussianNoise(full, 0.5, np.random.default_rng(3), space="logits").query(x)
    np.testing.assert_allclose(logit.probs.sum(axis=1), 1.0, atol=1e-12)
    assert not np.allclose(logit.probs, clean)
    huge = GaussianNoise(full, 100.0, np.random.default_rng(0)).query(images(300))
    assert np.isfinite(huge.probs).all() and (huge.probs.max(axis=1) == 1).any()  # dead rows
    np.testing.assert_allclose(huge.probs.sum(axis=1), 1.0, atol=1e-12)


def test_gaussian_noise_needs_probabilities_and_an_explicit_rng(full, model):
    with pytest.raises(TracemarkError, match=r"needs probabilities.*label-only"):
        GaussianNoise(LabelOnly(full), 0.1, np.random.default_rng(0)).query(images(2))
    with pytest.raises(TracemarkError, match=r"default_rng"):
        GaussianNoise(full, 0.1, 0)
    with pytest.raises(TracemarkError, match=r"sigma"):
        GaussianNoise(full, -1.0, np.random.default_rng(0))
    with pytest.raises(TracemarkError, match=r"space"):
        GaussianNoise(full, 0.1, np.random.default_rng(0), space="log")
    stack = LabelOnly(
        GaussianNoise(
            TorchModuleOracle(model, device="cpu", budget=9), 0.01, np.random.default_rng(0)
        )
    )
    r = stack.query(images(7))
    assert r.mode == "label" and r.softmax_applied and stack.queries == 7 and stack.budget == 9
    with pytest.raises(BudgetExceededError):
        stack.query(images(3))


# --- load_oracle --------------------------------------------------------------------------------


def test_load_oracle_dispatches_on_the_file(model, files, tmp_path):
    x = images(6)
    onnx = load_oracle(files / "model.onnx", budget=100)
    assert isinstance(onnx, OnnxOracle) and onnx.budget == 100
    ts_copy = tmp_path / "suspect.bin"  # TorchScript recognised by content, not name
    ts_copy.write_bytes((files / "model.pt").read_bytes())
    ts = load_oracle(ts_copy, device="cpu", outputs="logits")
    assert isinstance(ts, TorchScriptOracle)
    np.testing.assert_allclose(ts.query(x).probs, onnx.query(x).probs, atol=1e-5)
    with pytest.raises(TracemarkError, match=r"does not exist"):
        load_oracle(tmp_path / "missing.onnx")
    with pytest.raises(TracemarkError, match=r"is not a file"):
        load_oracle(tmp_path)
    with pytest.raises(TracemarkError, match=r"not a model file.*ONNX.*TorchScript.*checkpoint"):
        load_oracle(files / "garbage.bin")
    with pytest.raises(TracemarkError, match=r"could not load .* as an ONNX model"):
        load_oracle(files / "garbage.onnx")
    state_dict = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state_dict)
    with pytest.raises(TracemarkError, match=r"not a tracemark checkpoint.*Supported model files"):
        load_oracle(state_dict)


def test_load_oracle_reads_tracemark_checkpoints(tmp_path):
    from tracemark.models import build_model
    from tracemark.training import save_checkpoint

    net = build_model("small-cnn", in_channels=1, num_classes=10, seed=3)
    save_checkpoint(net, tmp_path / "model.ckpt")
    oracle = load_oracle(tmp_path / "model.ckpt", device="cpu", budget=50)
    assert type(oracle) is TorchModuleOracle and oracle.budget == 50
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    expected = TorchModuleOracle(net, device="cpu", channels_last=False).query(x)
    np.testing.assert_allclose(oracle.query(x).probs, expected.probs, atol=1e-5)
    assert oracle.num_classes == 10 and oracle.queries == 4


def test_importing_the_oracle_needs_neither_torch_nor_onnxruntime(tmp_path):
    code = """
import sys
sys.modules["torch"] = None
sys.modules["onnxruntime"] = None
import numpy as np
import tracemark.oracle as o
from tracemark.errors import TracemarkError
r = o.LabelOnly(o.CallableOracle(lambda x: x.reshape(len(x), -1)[:, :3])).query(
    np.full((2, 2, 2, 1), 0.5, np.float32)
)
assert r.mode == "label"
for make, extra in [
    (lambda: o.TorchModuleOracle(None), "tracemark[torch]"),
    (lambda: o.OnnxOracle(sys.argv[1]), "tracemark[onnx]"),
]:
    try:
        make()
    except TracemarkError as exc:
        assert extra in str(exc), exc
    else:
        raise AssertionError("no error")
print("ok")
"""
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_file)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
