"""Keys: validation, 0600 files, commitments, and seed-derived determinism."""

import json
import stat
import subprocess
import sys

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.keys import Key, load_key
from tracemark.rng import derive, derive_keys, hash_uniform


def test_generated_key_has_256_bit_seed_and_defaults():
    key = Key.generate("tracker")
    assert len(bytes.fromhex(key.seed)) == 32
    assert key.params == {
        "eps": 8 / 255,
        "r": 0.7,
        "pattern": "stripes",
        "bands": 16,
        "compress": True,
    }
    assert Key.generate("tracker").seed != key.seed


def test_save_is_0600_and_round_trips(tmp_path):
    key = Key.generate("tracker", r=0.8, eps=4 / 255)
    path = tmp_path / "k.json"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    assert not list(tmp_path.glob(".*tmp"))


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.json"
    Key.generate("tracker").save(path)
    before = path.read_bytes()
    with pytest.raises(TracemarkError, match="--force"):
        Key.generate("tracker").save(path)
    assert path.read_bytes() == before
    Key.generate("tracker").save(path, force=True)
    assert path.read_bytes() != before


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(seed="ab" * 8 + "zz"), "hexadecimal"),
        (lambda d: d.update(seed="ab" * 15), "at least 128"),
        (lambda d: d.update(method="nope"), "unknown method"),
        (lambda d: d["params"].update(r=1.5), "params"),
        (lambda d: d["params"].update(colour="red"), "params"),
        (lambda d: d.pop("seed"), "seed"),
    ],
)
def test_invalid_key_files_name_the_problem(tmp_path, mutate, message):
    data = json.loads(Key.generate("tracker").model_dump_json())
    mutate(data)
    path = tmp_path / "k.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TracemarkError, match=message):
        load_key(path)


def test_load_key_errors(tmp_path):
    with pytest.raises(TracemarkError, match="does not exist"):
        load_key(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TracemarkError, match="not valid JSON"):
        load_key(tmp_path / "bad.json")
    Key.generate("tracker").save(tmp_path / "k.json")
    with pytest.raises(TracemarkError, match="not a 'isotope' key"):
        load_key(tmp_path / "k.json", method="isotope")


def test_commitment_binds_key_and_hides_seed():
    key = Key.generate("tracker")
    c = key.commitment()
    assert len(c) == 64 and c == key.commitment()
    assert key.verify_commitment(c.upper())
    assert key.seed not in c
    other_seed = key.model_copy(update={"seed": Key.generate("tracker").seed})
    assert other_seed.commitment() != c
    other_params = Key(method="tracker", seed=key.seed, params={"r": 0.8})
    assert other_params.commitment() != c
    info = key.public_info()
    assert "seed" not in info and key.seed not in json.dumps(info)


def test_commitment_is_a_known_value():
    # Pinned: a commitment published today must verify with every future version. Key
    # files record their format (1 before 0.7.0, 2 since), so an old file keeps its value.
    key = Key(method="tracker", seed="00" * 32, created="2026-01-01T00:00:00+00:00")
    assert key.version == 2 and key.commitment() == KNOWN_COMMITMENT
    old = Key.model_validate({**key.model_dump(), "version": 1})
    assert old.commitment() == KNOWN_COMMITMENT_FORMAT_1


KNOWN_COMMITMENT = "d733848d8dd62845045cbfc15b2abdc8fc03a66bf6aa3e08b348ac61c9168796"
KNOWN_COMMITMENT_FORMAT_1 = "b62125ea4de1d8ea5167e453fe5476e16ce358aff38dffd4254a3312a8254be9"


def test_derive_depends_on_every_part():
    seed = "11" * 16
    a = derive(seed, "p", 1).integers(0, 2**62, 4)
    assert np.array_equal(a, derive(seed, "p", 1).integers(0, 2**62, 4))
    for other in (
        derive(seed, "q", 1),
        derive(seed, "p", 2),
        derive("12" * 16, "p", 1),
        derive(seed, "p", "1"),
    ):
        assert not np.array_equal(a, other.integers(0, 2**62, 4))


def test_hash_uniform_matches_splitmix64_reference():
    # splitmix64 seeded with 0: first outputs 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4.
    u = hash_uniform(np.zeros(2, dtype=np.uint64), np.arange(2))
    assert [int(v * 2**53) << 11 for v in u] == [
        0xE220A8397B1DCDAF & ~0x7FF,
        0x6E789E6AA1B965F4 & ~0x7FF,
    ]
    big = hash_uniform(derive_keys("22" * 16, "x", range(1000))[:, None], np.arange(100)[None])
    assert big.min() >= 0 and big.max() < 1 and abs(big.mean() - 0.5) < 0.005


MARK_SCRIPT = """
import hashlib, numpy as np
from tracemark.keys import Key
from tracemark.methods import tracker
from tracemark.datasets import load_fashion_mnist
x = load_fashion_mnist(split="test").images[:64]
rgb = np.repeat(x[:8], 3, axis=-1)
key = Key(method="tracker", seed="5a" * 32)
a = tracker.mark(x, key, ids=[f"img{i}" for i in range(64)])
b = tracker.mark(rgb, Key(method="tracker", seed="5b" * 32, params={"pattern": "natural"}))
print(hashlib.sha256((a * 255).round().astype(np.uint8).tobytes()).hexdigest())
print(hashlib.sha256((b * 255).round().astype(np.uint8).tobytes()).hexdigest())
"""


def test_same_key_gives_byte_identical_marks_across_processes():
    runs = [
        subprocess.run(
            [sys.executable, "-c", MARK_SCRIPT], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    # Pinned digests: the same key must give the same bytes on any machine and version.
    assert runs[0].split() == KNOWN_MARK_DIGESTS


KNOWN_MARK_DIGESTS = [
    "e8344091f3cf177a370cb8ec3c21df1d150a1cf00d806ae97df25e338d77621c",
    "a6531583ebb3cd02b22b47586402299accf6fe4db26cbf33ffb8081abaf117c0",
]


def test_derive_keys_is_the_first_8_bytes_of_derive_bytes():
    """The per-id keys (hashed from a copied prefix, for speed) are exactly the digests'."""
    from tracemark.rng import derive_bytes

    ids = [0, 7, -5, "cat.png", "ünï/cødé.jpg", b"\x00raw", 2**70, "7"]
    got = derive_keys("ab" * 16, "tracker/noise", ids)
    want = [int.from_bytes(derive_bytes("ab" * 16, "tracker/noise", i)[:8], "big") for i in ids]
    assert got.dtype == np.uint64 and got.tolist() == want
