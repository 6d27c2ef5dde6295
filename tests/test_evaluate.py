"""The evaluation harness on real Fashion-MNIST and tiny victims: specs, cells, the store,
resuming, executors (local processes, Ray), the report.

Rates on tiny victims are not power claims (those are the specs' runs, in
docs/results.md); the assertions here are the harness's own promises, plus bounds that
hold for any valid test (a false-positive count against its binomial bound).
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3

import numpy as np
import pytest
from scipy.stats import binom

from tracemark.errors import TracemarkError
from tracemark.evaluate import cells_of, evaluate, load_spec, open_store, parse_spec, summarise
from tracemark.evaluate.report import null_entries
from tracemark.evaluate.run import evidence_of

from helpers import TEST_SEED, live_processes, run_cli

TINY = {
    "name": "tiny",
    "seeds": [TEST_SEED],
    "alpha": 0.05,
    "accesses": ["probabilities", "label"],
    "dataset": {"owner_images": 3000, "test_images": 500, "aux_images": 300},
    "recipes": {"tiny": {"images": 400, "epochs": 6, "batch_size": 32}},
    "methods": {
        "tracker": {
            "method": "tracker",
            "members": 2,
            "never_published": 3,
            "images_per_user": 20,
            "collection": 40,
            "params": {"compress": False},
            "options": {"n_pseudo": 19},
        },
        "isotope": {
            "method": "isotope",
            "members": 2,
            "never_published": 2,
            "images_per_user": 40,
            "classes": [3, 6],
            "params": {"fraction": 0.5, "visibility": 0.6},
            "options": {"externals": 19, "aux_per_mark": 50},
        },
        "ubw": {
            "method": "ubw",
            "members": 1,
            "never_published": 3,
            "options": {"m": 30},
            "never_options": {"trigger": "independent"},
        },
    },
}
REPORT_CELL_FIELDS = {
    "method",
    "recipe",
    "countermeasure",
    "seed",
    "access",
    "tpr",
    "tpr_ci",
    "fpr_never_published",
    "fpr_never_published_ci",
    "fpr_clean",
    "fpr_clean_ci",
    "n_members",
    "n_never_published",
    "n_clean",
    "marked_accuracy",
    "clean_accuracy",
    "queries_per_audit",
}


def tiny(**changes) -> dict:
    spec = copy.deepcopy(TINY)
    spec.update(changes)
    return spec


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny spec run once, in this process: its store and cache."""
    root = tmp_path_factory.mktemp("tiny")
    summary = evaluate(parse_spec(tiny()), root / "results.db", cache=root / "cache")
    return root, summary


def test_specs_name_the_bad_field():
    bad = tiny()
    bad["recipes"]["tiny"]["epochs"] = 0
    with pytest.raises(TracemarkError, match=r"recipes\.tiny\.epochs"):
        parse_spec(bad)
    bad = tiny()
    bad["methods"]["tracker"]["colection"] = 40
    with pytest.raises(TracemarkError, match=r"methods\.tracker\.colection"):
        parse_spec(bad)
    bad = tiny()
    bad["methods"]["tracker"]["options"] = {"n_pseudos": 19}
    with pytest.raises(TracemarkError, match=r"methods\.tracker: unknown option\(s\) n_pseudos"):
        parse_spec(bad)
    bad = tiny()
    bad["methods"]["tracker"]["params"] = {"r": 2}
    with pytest.raises(TracemarkError, match=r"(?s)methods\.tracker.*params\.r"):
        parse_spec(bad)
    bad = tiny()
    bad["methods"]["ubw"]["members"] = 2
    with pytest.raises(TracemarkError, match="one publisher"):
        parse_spec(bad)
    bad = tiny()
    bad["methods"]["ubw"]["recipes"] = ["huge"]
    with pytest.raises(TracemarkError, match="no recipe huge"):
        parse_spec(bad)
    with pytest.raises(TracemarkError, match=r"shipped specs: .*demo-tracker"):
        load_spec("no-such-spec")


def test_the_committed_stores_cells_are_still_their_specs_cells():
    """A release that changes one method's audit or one countermeasure names it in the
    cells' identity (``audit_revision``, ``Countermeasure.revision``), so every cell the
    committed stores hold is still a cell of its shipped spec, resumed and not run again;
    except 0.7.6's fine-tuning cells, which tuned on the victim's own training images and
    run again on held-out ones."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    stores = {
        "realistic-0.3.db": "realistic",
        "countermeasures.db": "countermeasures",
        "ubw-c-strength.db": "ubw-c-strength",
    }
    superseded = set()
    for db, name in stores.items():
        ids = {c.cell_id for c in cells_of(load_spec(name))}
        with sqlite3.connect(f"file:{results / db}?immutable=1", uri=True) as con:
            stored = con.execute("SELECT cell_id, countermeasure FROM cells").fetchall()
        old = {cell for cell, cm in stored if cm.startswith("finetune(") and "data=" not in cm}
        kept = {cell for cell, _ in stored} - old
        assert len(kept) >= 5 and kept <= ids, db
        assert not old & ids, db
        superseded |= old
    assert len(superseded) == 9  # 0.7.6's fine-tuning cells: three methods at three rates


def test_every_shipped_spec_is_valid():
    from tracemark.evaluate import shipped_specs

    names = shipped_specs()
    assert {"demo-tracker", "demo-isotope", "demo-ubw"} <= set(names)
    for name in names:
        assert cells_of(load_spec(name))


def test_cells_are_keyed_by_their_spec_and_shared_across_specs():
    spec = parse_spec(tiny())
    cells = cells_of(spec)
    assert [c.method_name for c in cells] == ["tracker", "isotope", "ubw"]
    assert len({c.cell_id for c in cells}) == 3
    # The same cell in another spec (another name, another method beside it) is the same work.
    other = parse_spec(tiny(name="other", methods={"tracker": TINY["methods"]["tracker"]}))
    assert cells_of(other)[0].cell_id == cells[0].cell_id
    changed = tiny()
    changed["methods"]["tracker"]["options"] = {"n_pseudo": 39}
    assert cells_of(parse_spec(changed))[0].cell_id != cells[0].cell_id


def test_a_cached_release_is_never_reused_under_another_audit_revision(tmp_path, monkeypatch):
    """A dataset watermark's release is cached by its key and data, and by the method's
    audit_revision: 0.7.0 changed UBW-C's pattern, and a release crafted before must not
    be read back by a cell of the new revision (it would carry the old pattern)."""
    from tracemark.evaluate import run
    from tracemark.keys import Key
    from tracemark.methods.base import MarkedData

    spec = tiny()
    spec["methods"]["ubw"]["params"] = {"variant": "ubw-c"}
    cell = next(c for c in cells_of(parse_spec(spec)) if c.method_name == "ubw")
    made = []

    def make():
        made.append(len(made))
        key = Key(method="ubw", seed="00" * 32, params={"variant": "ubw-c", "num_classes": 10})
        images, mask = np.zeros((2, 28, 28, 1), np.float32), np.ones(2, bool)
        return MarkedData(images, mask, mask, key, np.zeros(2, np.int64))

    clean = np.arange(10)
    for _ in range(2):
        run.cached_release(tmp_path, cell, clean, make)
    assert made == [0]  # crafted once, then read back
    monkeypatch.setattr(run, "audit_revision", lambda method: {"audit_revision": "another"})
    run.cached_release(tmp_path, cell, clean, make)
    assert made == [0, 1]
    assert len(list((tmp_path / "releases").glob("*.npz"))) == 2


def test_a_run_stores_every_audit_and_a_rerun_computes_nothing(tiny_run):
    root, summary = tiny_run
    assert (summary.cells, summary.computed, summary.skipped) == (3, 3, 0)
    with open_store(root / "results.db") as store:
        cells = store.cells()
        audits = store.audits()
    assert len(cells) == 3
    # every owner on both models, in both access modes
    owners = {"tracker": 5, "isotope": 4, "ubw": 4}
    by_method = {c["cell_id"]: c["method_name"] for c in cells}
    for cell_id, method in by_method.items():
        mine = [a for a in audits if a["cell_id"] == cell_id]
        assert len(mine) == owners[method] * 2 * 2
    # the clean model of (recipe, seed) was trained once and reused by the other methods
    trained = [c["timings"]["clean_model_trained"] for c in cells]
    assert sorted(trained) == [0.0, 0.0, 1.0]
    again = evaluate(parse_spec(tiny()), root / "results.db", cache=root / "cache")
    assert (again.computed, again.skipped) == (0, 3)


def test_the_store_is_sqlite_in_wal_mode_and_keeps_each_audits_evidence(tiny_run):
    root, _ = tiny_run
    db = sqlite3.connect(root / "results.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    from tracemark.evaluate.run import evidence_of

    with open_store(root / "results.db") as store:
        tracker = next(c for c in store.cells() if c["method_name"] == "tracker")
        audit = next(a for a in store.audits(tracker["cell_id"]) if a["access"] == "probabilities")
    evidence = evidence_of(audit["evidence"])
    # anyone can recompute the stored p-value from the stored evidence, by the rule the
    # spec's options give: sequential, reading the pseudo-users in order until the h-th
    # one scores as well as the owner (the rest of the last batch does not count)
    from tracemark.methods.tracker.options import TrackerOptions
    from tracemark.stats import sequential_rank_p_value

    rule = TrackerOptions(**TINY["methods"]["tracker"]["options"])
    own = float(np.mean(evidence["user_losses"]))
    null = np.array(evidence["null_scores"])
    p, _ = sequential_rank_p_value(own, null, rule.stop_after, rule.cap, "less")
    assert p == audit["p_value"]


def test_rates_carry_the_textbook_clopper_pearson_intervals():
    """Pinned against published exact 95% intervals (not recomputed with the call the
    report makes): 0/10 is (0, 0.3085), 3/10 (0.0667, 0.6525), 10/10 (0.6915, 1)."""
    from tracemark.evaluate.report import Rate

    known = {
        (0, 10): (0.0, 0.308497),
        (3, 10): (0.066740, 0.652453),
        (10, 10): (0.691503, 1.0),
        (1, 13): (0.001946, 0.360297),
        (2, 20): (0.012349, 0.316983),
    }
    for (k, n), interval in known.items():
        assert Rate(k, n).ci == pytest.approx(interval, abs=1e-6), (k, n)
    assert Rate(0, 0).ci is None and Rate(0, 0).value is None


def test_report_json_has_every_field_and_exact_intervals(tiny_run, capsys):
    from tracemark.evaluate.report import Rate
    from tracemark.evaluate.store import open_store

    root, _ = tiny_run
    assert run_cli(["report", root / "results.db", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["cells"]) == 3 * 2  # cells x access modes
    with open_store(root / "results.db") as store:
        stored = {c["cell_id"]: store.audits(c["cell_id"]) for c in store.cells()}
    for entry in report["cells"]:
        assert set(entry) >= REPORT_CELL_FIELDS
        audits = [a for a in stored[entry["cell_id"]] if a["access"] == entry["access"]]
        groups = {
            "tpr": [a for a in audits if a["model"] == "marked" and a["member"]],
            "fpr_never_published": [
                a for a in audits if a["model"] == "marked" and not a["member"]
            ],
            "fpr_clean": [a for a in audits if a["model"] == "clean"],
        }
        for name, rows in groups.items():
            n = entry[{"tpr": "n_members", "fpr_never_published": "n_never_published",
                       "fpr_clean": "n_clean"}[name]]  # fmt: skip
            k = sum(a["decision"] for a in rows)
            assert n == len(rows) and entry[name] == pytest.approx(k / n)
            assert entry[f"{name}_ci"] == pytest.approx(Rate(k, n).ci)  # pinned above
        assert entry["queries_per_audit"] == pytest.approx(np.mean([a["queries"] for a in audits]))
        assert 0 < entry["clean_accuracy"] <= 1
    nulls = {(e["method"], e["access"]): e for e in report["null"]}
    assert set(nulls) == {
        (m, a) for m in ("tracker", "isotope", "ubw") for a in ("probabilities", "label")
    }
    for e in nulls.values():
        assert {"n", "fpr", "fpr_ci", "alpha"} <= set(e) and e["alpha"] == 0.05
        # A valid test flags Binomial(n, 0.05) of its n null audits (6 to 8 here): more
        # than the 0.999 quantile would be a failure of the null, not bad luck.
        assert round(e["fpr"] * e["n"]) <= binom.ppf(0.999, e["n"], 0.05)
    assert "share nothing" in report["sharing"]


def test_report_files_are_self_contained(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    out = tmp_path / "report"
    assert run_cli(["report", root / "results.db", "-o", out]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "rates-pooled.png", "accuracy.png"} <= names
    assert {f"qq-{m}-{a}.png" for m in ("tracker", "isotope", "ubw")
            for a in ("probabilities", "label")} <= names  # fmt: skip
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == sum(n.endswith(".png") for n in names)
    assert "src='http" not in page and "<script" not in page
    md = (out / "report.md").read_text()
    assert "## Null audits" in md and "![rates-pooled](rates-pooled.png)" in md
    assert "cells computed (" in md and "did not finish" not in md  # the run ended
    assert run_cli(["report", tmp_path / "missing.db"]) == 2


def test_the_report_names_every_false_positive_interval_wholly_above_alpha(
    tiny_run, tmp_path, capsys
):
    """A valid test cannot give a false-positive interval wholly above alpha, so the
    report lists each one as a defect to find: none in the tiny run; every clean-model
    audit of one cell turned into a false accusation (as a broken audit would) is named
    per cell and pooled, in the JSON, report.md and the console."""
    import shutil

    from tracemark.evaluate.store import Store

    root, _ = tiny_run
    assert run_cli(["report", root / "results.db", "--json"]) == 0
    honest = json.loads(capsys.readouterr().out)
    assert honest["fpr_above_alpha"] == []
    # cells x accesses and pooled entries, two false-positive rates each, all measured
    assert honest["fpr_intervals"] == 2 * (len(honest["cells"]) + len(honest["pooled"]))
    assert run_cli(["report", root / "results.db", "-o", tmp_path / "honest"]) == 0
    assert (
        f"none of {honest['fpr_intervals']} intervals"
        in (tmp_path / "honest" / "report.md").read_text()
    )
    db = tmp_path / "broken.db"
    shutil.copy(root / "results.db", db)
    with sqlite3.connect(db) as con:
        (cell,) = con.execute("SELECT cell_id FROM cells WHERE method_name = 'tracker'").fetchone()
        con.execute(
            "UPDATE audits SET decision = 1, p_value = 0.001 WHERE cell_id = ? AND model = 'clean' "
            "AND access = 'probabilities'",
            (cell,),
        )
        # as a store of results schema 1 (before digests), which a writable open seals
        con.execute("DELETE FROM cell_digests")
        con.execute("UPDATE meta SET value = '1' WHERE name = 'schema'")
    Store(db).close()
    capsys.readouterr()
    assert run_cli(["report", db, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["fpr_above_alpha"]
    assert {(e["seed"], e["rate"], e["access"], e["method"]) for e in found} == {
        (TEST_SEED, "fpr_clean", "probabilities", "tracker"),
        (None, "fpr_clean", "probabilities", "tracker"),
    }
    assert all(e["fpr"] == 1.0 and e["ci"][0] > e["alpha"] for e in found)
    assert run_cli(["report", db]) == 0
    assert "lies wholly above alpha" in capsys.readouterr().err
    assert run_cli(["report", db, "-o", tmp_path / "broken"]) == 0
    md = (tmp_path / "broken" / "report.md").read_text()
    table = md.split("wholly above alpha")[1].split("## ")[0]
    assert "| tracker | tiny | none | pooled | probabilities | clean | 1.000 [" in table


def test_a_run_killed_before_recording_its_end_reads_as_such(tiny_run, tmp_path):
    """A run stopped by SIGKILL (or still going) has no end in the store: the report
    says it did not finish, never "None of N cells computed (None s)"."""
    import shutil
    import sqlite3

    root, _ = tiny_run
    db = tmp_path / "killed.db"
    shutil.copy(root / "results.db", db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET finished = NULL, computed = NULL, seconds = NULL")
    assert run_cli(["report", db, "-o", tmp_path / "report"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    runs = [line for line in md.splitlines() if line.startswith("- run of")]
    assert runs and all("did not finish" in line and "None" not in line for line in runs)


def test_an_interrupted_run_resumes_and_ends_with_the_same_rows(tiny_run, tmp_path):
    root, _ = tiny_run
    spec = parse_spec(tiny())

    def stop_after_first(cell, result):
        raise KeyboardInterrupt

    db = tmp_path / "resumed.db"
    with pytest.raises(KeyboardInterrupt):
        evaluate(spec, db, cache=root / "cache", on_cell=stop_after_first)
    with open_store(db) as store:
        assert len(store.cells()) == 1
        assert store.runs()[0]["computed"] == 1 and store.runs()[0]["finished"]
    rest = evaluate(spec, db, cache=root / "cache")
    assert (rest.computed, rest.skipped) == (2, 1)
    with open_store(db) as a, open_store(root / "results.db") as b:
        assert sorted(a.rows()) == sorted(b.rows())


def test_a_cell_killed_mid_audit_resumes_at_the_next_owner_with_the_same_rows(
    tiny_run, tmp_path, monkeypatch
):
    """Each owner's finished audits are kept (under the model's weights) while the cell
    runs: a rerun audits only the owners the killed run had not reached, ends with the
    rows of a run never stopped, and leaves no progress behind."""
    from tracemark.methods import registry

    root, _ = tiny_run
    spec = parse_spec(tiny(methods={"tracker": TINY["methods"]["tracker"]}))
    tracker = registry.get("tracker")
    audit, calls = tracker.audit, []

    def killed_at(n):
        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return audit(*args, **kwargs)

        return counted

    owners = 2 + 3  # members and never-published owners, on the marked and the clean model
    audits = 2 * owners * len(TINY["accesses"])
    db = tmp_path / "killed.db"
    monkeypatch.setattr(tracker, "audit", killed_at(7))  # in the fourth owner's group
    with pytest.raises(KeyboardInterrupt):
        evaluate(spec, db, cache=root / "cache")
    partial = root / "cache" / "partial" / "audits"
    assert len(list(partial.glob("*/*.json"))) == 3
    calls.clear()
    monkeypatch.setattr(tracker, "audit", killed_at(0))
    assert evaluate(spec, db, cache=root / "cache").computed == 1
    assert len(calls) == audits - 3 * len(TINY["accesses"])
    assert not list(partial.glob("*/*"))
    with open_store(db) as a, open_store(root / "results.db") as b:
        assert sorted(a.rows()) == sorted(b.rows({c["cell_id"] for c in a.cells()}))


def test_a_selected_part_of_a_spec_gives_the_whole_runs_rows(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    spec = parse_spec(tiny())
    db = tmp_path / "part.db"
    part = evaluate(spec, db, cache=root / "cache", methods=["ubw"], seeds=[TEST_SEED])
    assert (part.cells, part.computed) == (1, 1)
    with open_store(db) as a, open_store(root / "results.db") as b:
        assert [c["method_name"] for c in a.cells()] == ["ubw"]
        assert sorted(a.rows()) == sorted(b.rows({c["cell_id"] for c in a.cells()}))
    known = re.escape("no method entry dp-sgd (it has isotope, tracker, ubw)")
    with pytest.raises(TracemarkError, match=known):
        evaluate(spec, db, methods=["dp-sgd", "ubw"])
    with pytest.raises(TracemarkError, match=f"no seed {TEST_SEED + 1} "):
        evaluate(spec, db, seeds=[TEST_SEED + 1])
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(
        'name = "one"\nseeds = [0]\n[recipes.r]\nimages = 400\n'
        '[methods.ubw]\nmethod = "ubw"\nmembers = 1\nnever_published = 1\n'
    )
    assert run_cli(["evaluate", spec_file, "--db", db, "--method", "tracker", "--quiet"]) == 2
    assert "no method entry tracker (it has ubw)" in capsys.readouterr().err


def test_a_failing_cell_stops_no_other_and_is_retried(tiny_run, tmp_path, monkeypatch):
    import tracemark.evaluate.executors as executors

    root, _ = tiny_run
    spec = parse_spec(
        tiny(methods={"tracker": TINY["methods"]["tracker"], "ubw": TINY["methods"]["ubw"]})
    )
    run_cell = executors.run_cell

    def broken_tracker(cell, *args):
        if cell.method_name == "tracker":
            raise ValueError("a bug in one cell")
        return run_cell(cell, *args)

    monkeypatch.setattr(executors, "run_cell", broken_tracker)
    db = tmp_path / "failing.db"
    seen = []
    first = evaluate(spec, db, cache=root / "cache", on_failure=lambda c, f: seen.append(c))
    assert first.computed == 1 and [f.error for f in first.failed] == [
        "ValueError: a bug in one cell"
    ]
    assert [c.method_name for c in seen] == ["tracker"] and "broken_tracker" in first.failed[
        0
    ].details
    with open_store(db) as store:
        assert [c["method_name"] for c in store.cells()] == ["ubw"]
    monkeypatch.setattr(executors, "run_cell", run_cell)
    second = evaluate(spec, db, cache=root / "cache")
    assert (second.computed, second.skipped, second.failed) == (1, 1, [])
    with open_store(db) as a, open_store(root / "results.db") as b:
        mine = {c["cell_id"] for c in a.cells()}
        assert sorted(a.rows()) == sorted(b.rows(mine))


def test_the_cli_names_a_failed_cell_and_exits_1(tmp_path, monkeypatch, capsys):
    import tracemark.evaluate.executors as executors
    from tracemark.errors import TracemarkError as Expected

    def refuse(cell, *args):
        raise Expected("the victim classified only 1 test image(s) correctly")

    monkeypatch.setattr(executors, "run_cell", refuse)
    spec = tmp_path / "one.toml"
    spec.write_text(
        'name = "one"\nseeds = [0]\n[recipes.r]\nimages = 400\n'
        '[methods.ubw]\nmethod = "ubw"\nmembers = 1\nnever_published = 1\n'
    )
    assert run_cli(["evaluate", spec, "--db", tmp_path / "one.db", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "ubw / r / none / seed 0: the victim classified only 1" in " ".join(err.split())
    assert "1 cell(s) failed" in err and "Traceback" not in err


def test_sigterm_stops_the_workers_with_the_driver(tmp_path):
    """``kill`` (SIGTERM) ends a run as Ctrl-C does: no worker computes on as an orphan."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    def spawned(pid: int) -> bool:
        try:
            return "spawn" in Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return False  # it just ended

    spec = tmp_path / "slow.toml"
    spec.write_text(
        'name = "slow"\nseeds = [0, 1]\n[recipes.r]\nimages = 400\nepochs = 50\n'
        '[methods.tracker]\nmethod = "tracker"\nmembers = 1\nnever_published = 1\n'
    )
    cmd = [sys.executable, "-m", "tracemark", "evaluate", str(spec), "--workers", "2", "--quiet"]
    cmd += ["--db", str(tmp_path / "slow.db")]
    driver = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        children = live_processes(lambda fields, ppid=driver.pid: int(fields[1]) == ppid)
        workers = {p for p in children if spawned(p)}
    assert len(workers) >= 2, "the workers never started"
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 130
    assert "interrupted" in driver.stderr.read().decode()
    deadline = time.monotonic() + 30
    while workers & set(live_processes(lambda fields: True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers & set(live_processes(lambda fields: True)), "a worker outlived the driver"


def test_worker_processes_give_the_same_rows(tiny_run, tmp_path):
    root, _ = tiny_run
    spec = parse_spec(
        tiny(methods={"tracker": TINY["methods"]["tracker"], "ubw": TINY["methods"]["ubw"]})
    )
    db = tmp_path / "workers.db"
    done = evaluate(spec, db, cache=tmp_path / "cache", workers=2)
    assert done.computed == 2
    with open_store(db) as a, open_store(root / "results.db") as b:
        mine = {c["cell_id"] for c in a.cells()}
        assert len(mine) == 2
        assert sorted(a.rows()) == sorted(b.rows(mine))


@pytest.mark.long
def test_ray_tasks_give_the_same_rows_as_the_local_executor(tiny_run, tmp_path):
    import ray  # the dev extra installs it (tracemark[ray])

    root, _ = tiny_run
    spec = parse_spec(tiny())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        done = evaluate(spec, tmp_path / "ray.db", cache=tmp_path / "cache", ray="auto")
    finally:
        ray.shutdown()
    assert done.computed == 3
    with open_store(tmp_path / "ray.db") as a, open_store(root / "results.db") as b:
        assert sorted(a.rows()) == sorted(b.rows())


def test_output_noise_is_the_same_for_the_same_image():
    from tracemark.oracle import CallableOracle, ImageSeededNoise

    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 1), dtype=np.float32)
    base = CallableOracle(lambda x: x.reshape(len(x), -1)[:, :10], num_classes=10)
    noisy = ImageSeededNoise(base, 0.05, "ab" * 16)
    first = noisy.query(images).probs
    again = noisy.query(images[::-1]).probs[::-1]
    assert np.array_equal(first, again)
    assert np.allclose(first.sum(axis=1), 1) and (first >= 0).all()
    assert not np.allclose(first, base.query(images).probs)


def test_a_countermeasure_cell_runs_and_is_its_own_cell(tmp_path):
    spec = parse_spec(
        tiny(
            methods={"tracker": TINY["methods"]["tracker"]},
            accesses=["probabilities"],
            countermeasures=[{"name": "none"}, {"name": "output-noise", "sigma": 0.05}],
        )
    )
    cells = cells_of(spec)
    assert [c.countermeasure.label for c in cells] == ["none", "output-noise(sigma=0.05)"]
    done = evaluate(spec, tmp_path / "cm.db", cache=tmp_path / "cache")
    assert done.computed == 2
    with open_store(tmp_path / "cm.db") as store:
        summary = summarise(store)
        null = null_entries(store)
    assert {e["countermeasure"] for e in summary["pooled"]} == {"none", "output-noise(sigma=0.05)"}
    assert all(len(e["p_values"]) == e["n"] for e in null)
    # The noise reached the audits: the same victim (one seed, same data: equal accuracy)
    # answered the same images differently in the two cells.
    with open_store(tmp_path / "cm.db") as store:
        by_label = {c["countermeasure"]: c for c in store.cells()}
        plain, noisy = (by_label[k] for k in ("none", "output-noise(sigma=0.05)"))
        assert plain["marked_accuracy"] == noisy["marked_accuracy"]

        def losses(cell):
            rows = [a for a in store.audits(cell["cell_id"]) if a["model"] == "marked"]
            first = min(rows, key=lambda a: a["owner"])
            return np.array(evidence_of(first["evidence"])["user_losses"])

        a, b = losses(plain), losses(noisy)
    assert a.shape == b.shape and not np.allclose(a, b)


def test_report_prints_for_a_person_what_the_json_holds(tiny_run, capsys):
    """`tracemark report DB` without --json: the pooled table's k/n counts, row by row, are
    the JSON's, and the null table is there."""
    import re

    root, _ = tiny_run
    assert run_cli(["report", root / "results.db", "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)
    assert run_cli(["report", root / "results.db"]) == 0
    shown = capsys.readouterr().out
    expected = []
    for e in pooled["pooled"]:
        for name, n in (("tpr", "n_members"), ("fpr_never_published", "n_never_published"),
                        ("fpr_clean", "n_clean")):  # fmt: skip
            if e[n]:
                expected.append(f"{round(e[name] * e[n])}/{e[n]}")
    assert re.findall(r"\b\d+/\d+\b", shown) == expected
    assert "TPR and FPR pooled over seeds" in shown and "Null audits" in shown
    for e in pooled["null"]:
        assert f"{e['fpr']:.3f} of {e['n']}" in " ".join(shown.split())


def test_the_committed_realistic_store_reproduces_the_published_table(capsys):
    """docs/results.md's realistic table (and the README's figures from it) is what
    `tracemark report results/realistic.db` computes from the committed store."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert run_cli(["report", root / "results" / "realistic.db", "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)["pooled"]
    names = {"tracker": "tracker", "isotope": "isotope", "ubw-p": "UBW-P", "ubw-c": "UBW-C"}
    recipes = {"cnn": "CNN", "resnet18": "ResNet-18"}
    accesses = {"probabilities": "probabilities", "topk": "top-5", "label": "label"}
    computed = {
        (names[e["method"]], recipes[e["recipe"]], accesses[e["access"]]): tuple(
            f"{round(e[r] * e[n])}/{e[n]}"
            for r, n in (
                ("tpr", "n_members"),
                ("fpr_never_published", "n_never_published"),
                ("fpr_clean", "n_clean"),
            )
        )
        for e in pooled
    }
    text = (root / "docs" / "results.md").read_text()
    section = text[text.index("### Realistic victims") :]
    rows = re.findall(
        r"^\| (tracker|isotope|UBW-P|UBW-C) \| (CNN|ResNet-18) \| (probabilities|top-5|label) "
        r"\| 3 \| (\d+/\d+) [^|]*\| (\d+/\d+) [^|]*\| (\d+/\d+) ",
        section[: section.index("\n\n", section.index("| method | victim"))],
        flags=re.M,
    )
    published = {r[:3]: r[3:] for r in rows}
    assert len(published) == 24 and published == computed
    assert "4/30 CNN, 5/30 ResNet-18" in (root / "README.md").read_text()


def test_concurrent_workers_train_a_cached_model_once(tmp_path):
    """Two workers asking the cache for the same clean model at once: one trains it (the
    other waits on the lock and loads the file), and one file is written; the training
    is told where to keep its progress, so that a killed run resumes it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cache = tmp_path / "cache"
    log = tmp_path / "trained.log"
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_cached_in_worker, cache, log) for _ in range(2)]
        results = [f.result(timeout=120) for f in futures]
    assert sorted(trained for trained, _ in results) == [False, True]
    assert log.read_text() == "trained, progress in partial/the-model.pt\n"
    assert [p.name for p in (cache / "models").glob("*.pt")] == ["the-model.pt"]
    assert results[0][1] == results[1][1]  # both hold the same weights


def test_a_worker_trains_its_marked_victim_while_another_trains_the_shared_clean_model(
    tmp_path,
):
    """Cells of one recipe and seed share the clean model: a worker that finds another one
    training it (its lock held) trains the cell's marked victim first instead of idling on
    the lock, and ends with the models of a worker that found no one training."""
    import fcntl
    import threading

    import torch

    from tracemark.evaluate.run import prepare
    from tracemark.evaluate.victims import clean_model_id

    quick = {"images": 200, "epochs": 2, "batch_size": 32}
    spec = parse_spec(
        tiny(recipes={"quick": quick}, methods={"tracker": TINY["methods"]["tracker"]})
    )
    cell = cells_of(spec)[0]
    order: list[str] = []
    marked_started, held = threading.Event(), threading.Event()

    def progress(name, total):
        order.append(name)
        if name == "train marked":
            marked_started.set()
        return lambda n: None

    clean_id = clean_model_id(spec.dataset, cell.recipe, cell.seed, spec.torch_threads)
    lock = tmp_path / "busy" / "models" / f"{clean_id}.lock"
    lock.parent.mkdir(parents=True)

    def other_worker():  # holds the clean model's lock until the marked training starts
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held.set()
            marked_started.wait(timeout=30)
            fcntl.flock(fh, fcntl.LOCK_UN)

    holder = threading.Thread(target=other_worker)
    holder.start()
    held.wait()
    busy = prepare(cell, tmp_path / "busy", progress=progress)
    holder.join()
    assert [n for n in order if n.startswith("train")] == ["train marked", "train clean"]
    order.clear()
    free = prepare(cell, tmp_path / "free", progress=progress)
    assert [n for n in order if n.startswith("train")] == ["train clean", "train marked"]
    for name in ("marked", "clean"):
        a, b = busy.models[name].state_dict(), free.models[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def _cached_in_worker(cache, log):
    import time

    import torch

    from tracemark.evaluate.victims import cached_model
    from tracemark.models import build_model

    def train(progress_at):  # where the training would keep its progress
        with open(log, "a") as fh:
            fh.write(f"trained, progress in {progress_at.relative_to(cache)}\n")
        time.sleep(1.0)  # long enough for the other worker to reach the lock
        torch.manual_seed(0)
        return build_model("small-cnn", num_classes=10, width=4)

    model, trained = cached_model(cache, "the-model", train)
    weights = float(sum(p.double().sum() for p in model.state_dict().values()))
    return trained, round(weights, 6)


def test_a_training_countermeasure_trains_a_recipes_clean_model_once_for_every_method(
    tmp_path, monkeypatch
):
    """The clean model trained under a training-level countermeasure is a function of the
    recipe, the seed and the countermeasure: two methods on one recipe train it once, a
    rerun trains nothing, and what the cache gives back (weights and the figures the
    countermeasure reported) is what training without a cache gives."""
    import torch

    from tracemark.countermeasures.training import EarlyStop
    from tracemark.evaluate.run import prepare

    trained: list[int] = []
    original = EarlyStop.train

    def counted(self, images, labels, trainer):
        trained.append(len(labels))
        return original(self, images, labels, trainer)

    monkeypatch.setattr(EarlyStop, "train", counted)
    quick = {"images": 200, "epochs": 3, "batch_size": 32}
    methods = {name: TINY["methods"][name] for name in ("tracker", "ubw")}
    spec = parse_spec(
        tiny(
            recipes={"quick": quick},
            methods=methods,
            countermeasures=[{"name": "early-stop", "patience": 1}],
        )
    )
    cells = cells_of(spec)
    assert len(cells) == 2
    first = [prepare(cell, tmp_path / "cache") for cell in cells]
    assert len(trained) == 3  # each method's marked victim, and one clean model
    again = [prepare(cell, tmp_path / "cache") for cell in cells]
    assert len(trained) == 3  # the rerun trains nothing
    uncached = prepare(cells[1], None)
    assert len(trained) == 5
    for other in (again[1], uncached):
        for name in ("marked", "clean"):
            a, b = first[1].models[name].state_dict(), other.models[name].state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), name
        assert other.countermeasure == first[1].countermeasure
    assert "stopped_at_epoch" in again[0].countermeasure
    assert first[0].models["clean"] is not first[1].models["clean"]
    a, b = first[0].models["clean"].state_dict(), first[1].models["clean"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_and_the_filters_get_held_out_clean_images_and_the_cached_victim(
    tmp_path, monkeypatch
):
    """The papers' defenders tune, and fit their detectors, on clean images outside the
    training set (MembershipTracker §5.2.3 and §5.2.6, Data Isotopes §8.5). The harness
    gives fine-tuning's two victims the same ``images`` held-out images, and the
    out-of-distribution filters a reference trained on as many as the victim's clean data:
    none of them the victim's, nor any owner's. (Tuned on its own training images, a
    fitted victim's loss is near zero and the tuning changes nothing; a reference trained
    on the images it scores has memorised the clean ones and so knows the marked ones.)
    ART's detectors read the cached plain victim, the model they would train again."""
    import tracemark.evaluate.countered as countered
    import tracemark.training as training
    from tracemark.evaluate.run import prepare
    from tracemark.evaluate.world import clean_indices, held_out_indices, load_split

    tuned: list[tuple[np.ndarray, np.ndarray]] = []
    victims: list[np.ndarray] = []
    trainings: list[int] = []
    original, original_victim = training.train_model, countered.train_victim

    def spy(model, images, labels, config=None, *args, **kwargs):
        trainings.append(len(labels))
        if config is not None and not config.reinit:  # a fine-tuning, not a victim
            tuned.append((images.copy(), labels.copy()))
        return original(model, images, labels, config, *args, **kwargs)

    def spy_victim(recipe, images, *args, **kwargs):
        victims.append(images.copy())
        return original_victim(recipe, images, *args, **kwargs)

    monkeypatch.setattr(training, "train_model", spy)
    monkeypatch.setattr(countered, "train_victim", spy_victim)
    finetune = {"name": "finetune", "lr": 0.01, "epochs": 1, "images": 150}
    spec = parse_spec(
        tiny(
            recipes={"quick": {"images": 200, "epochs": 2, "batch_size": 32}},
            methods={"isotope": TINY["methods"]["isotope"]},
            accesses=["probabilities"],
            countermeasures=[
                {"name": "none"},
                finetune,
                {"name": "filter-msp", "budget": 0.1},
                {"name": "filter-spectral", "budget": 0.1},
            ],
        )
    )
    plain_cell, cell, filtered, spectral = cells_of(spec)
    assert cell.payload()["countermeasure_revision"] == "0.7.7: held-out data"
    assert filtered.payload()["countermeasure_revision"] == "0.7.7: held-out reference"
    # both tune and filter the plain victim, which keeps its identity
    assert countered.marked_model_id(cell) == countered.marked_model_id(plain_cell)
    p = prepare(cell, tmp_path / "cache")
    assert p.countermeasure["finetune_images"] == 150
    assert len(tuned) == 2  # the marked victim and the clean model
    train = load_split(spec.dataset, "train")
    clean = clean_indices(spec.dataset, cell.recipe, cell.seed)
    held = held_out_indices(spec.dataset, cell.seed, clean, 150)
    for images, labels in tuned:
        np.testing.assert_array_equal(images, train.images[held])
        np.testing.assert_array_equal(labels, train.labels[held])
    owned = set(np.concatenate([o.indices for o in p.world.owners]).tolist())
    assert not set(held.tolist()) & (set(clean.tolist()) | owned)
    with pytest.raises(TracemarkError, match="held-out clean images"):
        held_out_indices(spec.dataset, cell.seed, clean, len(train.labels))

    victims.clear()
    p = prepare(filtered, tmp_path / "cache")
    reference = held_out_indices(spec.dataset, cell.seed, clean, cell.recipe.images)
    assert len(victims) == 2  # the reference, then the victim on what the filter kept
    np.testing.assert_array_equal(victims[0], train.images[reference])
    assert len(victims[1]) == len(p.world.training) - round(0.1 * len(p.world.training))
    # cached beside the clean model and the plain victim, for every filter of the seed
    assert len(list((tmp_path / "cache" / "models").glob("*.pt"))) == 3
    # ART's detectors read the cached plain victim: the filtered victim is all it trains
    trainings.clear()
    prepare(spectral, tmp_path / "cache")
    assert len(trainings) == 1


def test_countermeasures_of_every_stage_reach_the_victims_and_report_their_cost(tmp_path):
    """One cell per stage: the post-training and output ones reuse the cached plain
    victims, the filter reports what it removed, the training change trains both
    models anew; every cell records the accuracy it cost against the plain victim."""
    spec = parse_spec(
        tiny(
            methods={"tracker": TINY["methods"]["tracker"]},
            accesses=["probabilities"],
            countermeasures=[
                {"name": "none"},
                {"name": "prune", "amount": 0.9},
                {"name": "rounding", "decimals": 1},
                {"name": "filter-knn", "budget": 0.2},
                {"name": "label-smoothing", "epsilon": 0.2},
            ],
        )
    )
    done = evaluate(spec, tmp_path / "cm.db", cache=tmp_path / "cache")
    assert done.computed == 5
    with open_store(tmp_path / "cm.db") as store:
        cells = {c["countermeasure"].split("(")[0]: c for c in store.cells()}
        losses, clean_losses = {}, {}
        for name, c in cells.items():
            for model, into in (("marked", losses), ("clean", clean_losses)):
                rows = [a for a in store.audits(c["cell_id"]) if a["model"] == model]
                first = min(rows, key=lambda a: a["owner"])
                into[name] = np.array(evidence_of(first["evidence"])["user_losses"])
    plain = cells["none"]
    assert "countermeasure" not in plain["metrics"]
    # one marked victim, trained once: the output and post cells start from it
    assert cells["rounding"]["marked_accuracy"] == plain["marked_accuracy"]
    assert not np.allclose(losses["rounding"], losses["none"])
    assert np.allclose(losses["rounding"], losses["none"], atol=0.2)  # rounded to 0.1
    for name in ("prune", "rounding", "filter-knn", "label-smoothing"):
        figures = cells[name]["metrics"]["countermeasure"]
        assert figures["plain_accuracy"] == plain["marked_accuracy"]  # the same victim, plain
        assert figures["accuracy_cost"] == pytest.approx(
            figures["plain_accuracy"] - cells[name]["marked_accuracy"]
        )
    # 90% of the weights gone costs accuracy; the training change and the post-training
    # change reach the clean model too (it answers the same images differently); the
    # output change leaves the models alone and changes only their answers
    assert cells["prune"]["metrics"]["countermeasure"]["accuracy_cost"] > 0.05
    for name in ("prune", "label-smoothing", "rounding"):
        assert not np.allclose(clean_losses[name], clean_losses["none"]), name
    assert np.array_equal(clean_losses["filter-knn"], clean_losses["none"])  # plain clean
    removed = cells["filter-knn"]["metrics"]["countermeasure"]
    n = 400 + 2 * 20  # clean images and the two members' published images
    assert removed["removed"] == round(0.2 * n) and removed["marked"] == 40
    assert 0 <= removed["marked_removed"] <= 40
    assert removed["recall"] == removed["marked_removed"] / 40
    # the report's table and plot of TPR against accuracy cost
    assert run_cli(["report", str(tmp_path / "cm.db"), "-o", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Countermeasures: what each costs the trainer" in text
    assert "filter-knn(budget=0.2, k=10)" in text and "countermeasures.png" in text
    assert (tmp_path / "rep" / "countermeasures.png").stat().st_size > 10_000
