"""Adding a method is one object and one registry line: a toy method, registered here.

The toy pastes a key-coloured patch into a corner of the owner's images and audits by
ranking the model's belief in the owner's class on the owner's images among the same
images carrying never-published patches. Nothing else in tracemark is told about it:
keys, the API (marking a folder, auditing) and the contract tests find it through the
registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

import tracemark
from tracemark.errors import TracemarkError
from tracemark.images import read_folder
from tracemark.keys import Key
from tracemark.methods import registry
from tracemark.methods.base import (
    AuditData,
    AuditOptions,
    MarkedData,
    build_verdict,
    check_budget,
    check_key,
)
from tracemark.options import option, resolve
from tracemark.rng import derive
from tracemark.stats import rank_p_value, standardised_gap

from contract import CLASS, check_contract, make_world, oracle_for
from helpers import run_cli, write_pngs


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(6, ge=1, le=28, description="side of the corner patch")


@dataclass(frozen=True)
class ToyOptions(AuditOptions):
    draws: int = option(19, "toy: never-published patches to rank against.", min=1)


def _patch(images: np.ndarray, value: float, size: int) -> np.ndarray:
    out = np.array(images, dtype=np.float32, copy=True)
    out[:, :size, :size, :] = value
    return out


class Toy:
    name = "toy"
    kind = "images"
    params = ToyParams
    options = ToyOptions
    needs = ("marked",)
    progress_unit = "draws"

    def mark(
        self,
        images,
        key,
        *,
        ids=None,
        labels=None,
        publish=None,
        progress_factory=None,
        device="auto",
    ) -> MarkedData:
        value = float(key.rng("toy/value").uniform())
        out = _patch(np.stack(images), value, check_key(key, "toy").size)
        flags = np.ones(len(out), dtype=bool)
        return MarkedData(out, flags, flags.copy(), key)

    def audit(self, oracle, key, data: AuditData, options=None, progress=None):
        params = check_key(key, "toy")
        options = resolve(ToyOptions, options, {})
        images, label = data.need("images", "toy: --marked"), data.need("label", "toy: --label")
        n = len(images)
        check_budget(oracle, n * (1 + options.draws), f"{options.draws + 1} sets of {n}", "fewer")
        start = oracle.queries
        mine = float(oracle.query(images).prob_of(label).mean())
        null = np.array(
            [
                oracle.query(
                    _patch(images, float(derive(key.seed, "toy/null", j).uniform()), params.size)
                )
                .prob_of(label)
                .mean()
                for j in range(options.draws)
            ]
        )
        return build_verdict(
            "toy",
            key,
            options,
            p_value=rank_p_value(mine, null, "greater"),
            queries=oracle.queries - start,
            evidence={"null": null.tolist()},
            label=label,
            label_source="given",
            effect=standardised_gap(mine, null),
            effect_description="owner's belief above never-published patches', in sds",
            access="probabilities",
            test="toy rank test (exact)",
        )

    def read(self, key, sources, model) -> AuditData:
        images = read_folder(sources.marked, mode=model.mode, size=model.size).stack()
        return AuditData(images=images, label=sources.label)

    def progress_steps(self, options) -> int:
        return options.draws


def test_a_toy_method_registered_at_run_time_works_everywhere(
    fmnist_train, fmnist_test, tmp_path, capsys
):
    world = make_world(fmnist_train, fmnist_test)
    with registry.registered(Toy()):
        assert "toy" in registry.names()
        # keys validate its parameters, through the registry
        assert Key.generate("toy", size=4).typed_params().size == 4
        with pytest.raises(TracemarkError, match=r"params\.size"):
            Key.generate("toy", size=99)
        # the shared contract holds for it, and the other methods refuse its keys
        check_contract(registry.get("toy"), world, [Key.generate("tracker")])
        check_contract(registry.get("tracker"), world, [Key.generate("toy")])
        # the command line makes its keys; the API marks a folder and audits with it
        key_path = tmp_path / "toy.key"
        assert run_cli(["keygen", "-o", key_path, "--method", "toy", "-p", "size=5"]) == 0
        write_pngs(tmp_path / "photos", world.collection)
        manifest = tracemark.mark_folder(key_path, tmp_path / "photos", tmp_path / "published")
        assert manifest.exists() and len(list((tmp_path / "published").iterdir())) == 12
        verdict = tracemark.audit(
            oracle_for(world),
            key_path,
            tmp_path / "published",
            label=CLASS,
            draws=9,
            alpha=0.1,
        )
        assert verdict.method == "toy" and verdict.queries == 12 * 10
        assert verdict.statistics == {} and 0 < verdict.p_value <= 1
    with pytest.raises(TracemarkError, match="unknown method 'toy'"):
        Key.generate("toy")
    with pytest.raises(TracemarkError, match="already registered"):
        registry.register(registry.get("tracker"))
