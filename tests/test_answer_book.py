"""Answer books: the plain victims' answers, asked once and read by every cell that audits
the same model (the cell without a countermeasure and the output-level ones)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import tracemark.training as training
from test_evaluate import TINY, tiny
from tracemark.evaluate import cells_of, parse_spec
from tracemark.evaluate.answer_book import AnswerBook
from tracemark.evaluate.run import run_cell
from tracemark.oracle import CallableOracle, TorchModuleOracle
from tracemark.oracle.image_hash import image_hashes
from tracemark.oracle.memo import AnswerCache


def _answers(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 6, 6, 1), dtype=np.float32)
    model = CallableOracle(lambda x: x.reshape(len(x), -1)[:, :10], num_classes=10)
    return images, model


def test_a_book_is_shared_by_its_writers_and_answers_a_batch_only_whole(tmp_path):
    images, model = _answers(8)
    hashes = image_hashes(images)
    first = AnswerBook(tmp_path, "cell-a")
    first.add(hashes[:5], model.query(images[:5]))
    first.flush()
    other = AnswerBook(tmp_path, "cell-b")  # another worker, started later
    assert len(other) == 5
    assert np.array_equal(other.lookup(hashes[:5]).probs, model.query(images[:5]).probs)
    assert other.lookup(hashes[4:6]) is None  # one unknown image: the batch goes to the model
    first.add(hashes[5:], model.query(images[5:]))
    first.flush()
    other.refresh()
    assert np.array_equal(other.lookup(hashes).probs, model.query(images).probs)
    # a rerun of the same writer numbers its shards on: nothing it wrote is replaced
    again = AnswerBook(tmp_path, "cell-a")
    again.add(image_hashes(images[:1] * 0.5), model.query(images[:1] * 0.5))
    again.flush()
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
        "cell-a-0.npz",
        "cell-a-1.npz",
        "cell-a-2.npz",
    ]
    # a torn shard is an accelerator lost, not an error
    (tmp_path / "cell-c-0.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.warns(UserWarning, match="unreadable answer shard"):
        assert len(AnswerBook(tmp_path, "cell-d")) == 9


def test_an_answer_cache_sends_only_batches_its_book_cannot_answer_whole(tmp_path):
    images, model = _answers(12)
    _, reference = _answers(0)  # the same function, for checking answers
    book = AnswerBook(tmp_path, "w")
    AnswerCache(model, book).view(passthrough=True).query(images[:6])
    book.flush()
    assert model.queries == 6 and len(book) == 6
    view = AnswerCache(model, AnswerBook(tmp_path, "w2")).view(passthrough=True)
    assert np.array_equal(view.query(images[:6]).probs, reference.query(images[:6]).probs)
    assert model.queries == 6  # read from the book
    view.query(images[4:8])  # two known, two not: all four asked, as the audit asked them
    assert model.queries == 10 and view.queries == 10


def test_output_level_cells_read_the_plain_victims_answers_from_the_book(tmp_path, monkeypatch):
    """An output-level countermeasure wraps the plain victim's answers: its cell asks the
    model about the images the cell without one asked. With the book, it asks the model
    nothing (its accuracies too), and its rows are those of the same cell run alone."""
    spec = parse_spec(
        tiny(
            methods={"tracker": TINY["methods"]["tracker"]},
            countermeasures=[{"name": "none"}, {"name": "temperature", "t": 2.0}],
        )
    )
    plain_cell, warm_cell = cells_of(spec)
    asked: list[int] = []
    predict = TorchModuleOracle._predict
    monkeypatch.setattr(
        TorchModuleOracle,
        "_predict",
        lambda self, batch: asked.append(len(batch)) or predict(self, batch),
    )
    measured: list[int] = []
    accuracy = training.accuracy
    monkeypatch.setattr(
        training, "accuracy", lambda *a, **k: measured.append(1) or accuracy(*a, **k)
    )

    plain = run_cell(plain_cell, tmp_path / "cache", device="cpu")
    assert sum(asked) > 1000 and len(measured) == 2
    asked.clear()
    measured.clear()
    warm = run_cell(warm_cell, tmp_path / "cache", device="cpu")
    assert asked == [] and measured == []
    # the same cell with the same models and an empty book asks the model every query,
    # and gets the same rows
    shutil.copytree(tmp_path / "cache" / "models", tmp_path / "alone" / "models")
    alone = run_cell(warm_cell, tmp_path / "alone", device="cpu")
    # (the label-only audits may ask views the full ones did not: at least every full query)
    assert sum(asked) >= sum(r.queries for r in alone.audits if r.access == "probabilities")
    assert len(measured) == 2  # marked and clean: the plain victim is the marked one
    assert [dataclasses.asdict(r) for r in warm.audits] == [
        dataclasses.asdict(r) for r in alone.audits
    ]
    assert (warm.marked_accuracy, warm.clean_accuracy) == (
        alone.marked_accuracy,
        alone.clean_accuracy,
    )
    assert warm.metrics == alone.metrics
    # the temperature reached the audits: the same images, other losses
    losses = [
        [r.effect for r in cell.audits if r.access == "probabilities"] for cell in (plain, warm)
    ]
    assert losses[0] != losses[1]
