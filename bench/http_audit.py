"""The tracker demo's audits over HTTP: identical to in-process, under faults, after SIGINT.

    python bench/http_audit.py --quick        # the quick demo spec's owners and models (minutes)
    python bench/http_audit.py                # the full demo spec's (about an hour on 2 cores)
    python bench/http_audit.py --quick --parts plain --views flip-shift2   # audits with views

Prepares the tracker demo spec's cell (marks every owner's data, trains the victim and the
clean model), audits every owner in-process, then serves each model with `tracemark
serve` (uvicorn on 127.0.0.1) and audits again over the Open Inference Protocol v2:

1. plainly, with a query log: every user's p-value compared with the in-process one;
2. with 30% of requests failing (500 or 429) and random latency: verdicts compared,
   and the server's access log checked for images answered twice;
3. interrupted by SIGINT once the log is 40% full, then re-run with the same log:
   verdicts compared, repeats counted;
4. against servers that reveal only the top 5 labels, or only the label: TPR and FPR
   next to the full-probability figures.

Prints one line per check and a JSON summary, with the audits' images/s in-process and
over HTTP (``--views``: every tracker audit queries each image under that set of views).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from pathlib import Path

from tracemark.evaluate import cells_of, load_spec, parse_spec
from tracemark.evaluate.run import AuditRow, audit_all, prepare
from tracemark.oracle import EndpointConfig, TorchModuleOracle, open_endpoint
from tracemark.serve import FaultPlan, ServeOptions, create_app, serving
from tracemark.training import export_torchscript

PARTS = ("plain", "faults", "sigint", "topk", "label")


def _records(path: Path) -> list[str]:
    """Image hashes answered in a query log (a line being written is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines()[1:]:
        with suppress(ValueError, KeyError):  # KeyError: a batch line (binary answer)
            out.append(json.loads(line)["sha256"])
    return out


def _served(path: Path) -> list[str]:
    return [json.loads(line)["sha256"] for line in path.read_text().splitlines()]


def _compare(a: list[AuditRow], b: list[AuditRow]) -> dict:
    """How many audits' verdicts are identical (p-value, effect, decision) between runs."""
    keys = ("p_value", "effect", "decision")
    pairs = list(zip(a, b, strict=True))
    same = sum(all(getattr(x, k) == getattr(y, k) for k in keys) for x, y in pairs)
    worst = max(abs(x.p_value - y.p_value) for x, y in pairs)
    return {"audits": len(pairs), "identical": same, "max_abs_p_difference": worst}


def _rates(rows: list[AuditRow]) -> dict:
    """Per access: members flagged on the victim, never-published owners flagged on it,
    every owner flagged on the clean model (k/n each)."""
    out = {}
    for access in dict.fromkeys(r.access for r in rows):
        mine = [r for r in rows if r.access == access]
        groups = {
            "tpr": [r for r in mine if r.model == "marked" and r.member],
            "fpr": [r for r in mine if r.model == "marked" and not r.member],
            "fpr_clean_model": [r for r in mine if r.model == "clean"],
        }
        out[access] = {k: f"{sum(r.decision for r in g)}/{len(g)}" for k, g in groups.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick demo's sizes")
    ap.add_argument("--nonmembers", type=int, help="override the number of non-member users")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--parts", default=",".join(PARTS), help="which checks to run")
    ap.add_argument("--views", help="the tracker audits' views (default: the spec's)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        ap.error(f"--parts takes some of {','.join(PARTS)}")
    spec = load_spec("demo-tracker-quick" if args.quick else "demo-tracker")
    if args.nonmembers is not None or args.views is not None:
        data = spec.model_dump()
        if args.nonmembers is not None:
            data["methods"]["tracker"]["never_published"] = args.nonmembers
        if args.views is not None:
            data["methods"]["tracker"]["options"]["views"] = args.views
        spec = parse_spec(data)
    cell = cells_of(spec)[0]
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    say(f"marking and training: {cell.label}")
    prepared = prepare(cell)
    say("auditing in-process")
    in_process = {
        n: TorchModuleOracle(m, num_classes=prepared.num_classes)
        for n, m in prepared.models.items()
    }
    t = time.perf_counter()
    local = audit_all(cell, prepared, in_process)
    seconds = time.perf_counter() - t
    owners = len(prepared.world.owners)
    summary: dict = {"config": {"owners": owners, "options": cell.method.options}}
    summary["in_process"] = _rates(local)
    sent = sum(o.queries for o in in_process.values())
    summary["in_process_images_per_second"] = round(sent / seconds)
    say(f"in-process: {sent:,} images in {seconds:.1f} s ({sent / seconds:,.0f} images/s)")

    tmp = Path(tempfile.mkdtemp(prefix="tracemark-http-bench-"))
    files = {}
    example = prepared.train.images[:2]
    for name, model in prepared.models.items():
        files[name] = tmp / f"{name}.pt"
        export_torchscript(model, files[name], example=example)

    @contextmanager
    def servers(tag: str, options: ServeOptions):
        """Each model behind its own `tracemark serve`; yields {name: (url, access log)}."""
        with ExitStack() as stack:
            out = {}
            for name, path in files.items():
                access = tmp / f"{tag}-{name}-served.jsonl"
                app = create_app(path, replace(options, name="cnn"), access_log=access)
                out[name] = (stack.enter_context(serving(app)), access)
            yield out

    def audit(tag: str, served: dict, accesses=None, interrupt_at=None) -> dict:
        """Every owner audited against the served models, through one query log per model."""
        cfg = EndpointConfig(
            concurrency=args.concurrency,
            backoff=0.01,
            max_backoff=0.2,
            retries=50,
            num_classes=prepared.num_classes,  # top-K and label answers do not say how many
        )
        with ExitStack() as stack:
            oracles = {}
            for name, (url, _) in served.items():
                log = tmp / f"{tag}-{name}-queries.jsonl"
                oracles[name] = stack.enter_context(
                    open_endpoint(f"{url}/v2/models/cnn", cfg, log=log)
                )
            if interrupt_at is not None:
                _interrupt_when(tmp / f"{tag}-marked-queries.jsonl", interrupt_at)
            t = time.perf_counter()
            rows = audit_all(cell, prepared, oracles, accesses=accesses)
            return {
                "rows": rows,
                "http_seconds": round(time.perf_counter() - t, 1),
                "traffic": {
                    n: {
                        "sent": o.queries,
                        "requests": o.requests,
                        "retried": o.retried,
                        "from_log": o.from_log,
                        "failures": dict(o.failures),
                    }
                    for n, o in oracles.items()
                },
            }

    def repeats(served: dict) -> dict[str, int]:
        """Per model: images its server answered more than once."""
        out = {}
        for name, (_, access) in served.items():
            hashes = _served(access) if access.exists() else []
            out[name] = len(hashes) - len(set(hashes))
        return out

    if "plain" in parts:
        say("auditing over HTTP (full probabilities)")
        with servers("plain", ServeOptions()) as served:
            plain = audit("plain", served)
        sent = sum(t["sent"] for t in plain["traffic"].values())
        summary["plain"] = {
            **_compare(local, plain["rows"]),
            "seconds": plain["http_seconds"],
            "images_per_second": round(sent / plain["http_seconds"]),
            "traffic": plain["traffic"],
        }
        say(f"HTTP vs in-process: {summary['plain']}")

    if "faults" in parts:
        say("auditing over HTTP with 30% of requests failing (500/429) and up to 50 ms latency")
        plan = FaultPlan(error_rate=0.3, error_codes=(500, 429), latency=0.05)
        with servers("faults", ServeOptions(faults=plan, seed="0f")) as served:
            faulty = audit("faults", served)
        summary["faults"] = {
            **_compare(local, faulty["rows"]),
            "traffic": faulty["traffic"],
            "images_answered_twice": repeats(served),
            "seconds": faulty["http_seconds"],
        }
        say(f"under faults: {summary['faults']}")

    if "sigint" in parts:
        total = sum(r.queries for r in local if r.model == "marked" and r.access == "probabilities")
        say(f"SIGINT once {int(0.4 * total)} of {total} answers are logged, then resume")
        with servers("sigint", ServeOptions()) as served:
            try:
                audit("sigint", served, interrupt_at=int(0.4 * total))
                raise SystemExit("the audit was not interrupted")
            except KeyboardInterrupt:
                pass
            kept = {n: len(_records(tmp / f"sigint-{n}-queries.jsonl")) for n in files}
            resumed = audit("sigint", served)  # same servers, same logs
        summary["sigint"] = {
            **_compare(local, resumed["rows"]),
            "answers_logged_before_interrupt": kept,
            "sent_after_resume": {n: t["sent"] for n, t in resumed["traffic"].items()},
            "images_answered_twice": repeats(served),
        }
        say(f"interrupted and resumed: {summary['sigint']}")

    restricted = {"topk": ServeOptions(top_k=spec.top_k), "label": ServeOptions(label_only=True)}
    for access, options in restricted.items():
        if access not in parts:
            continue
        say(f"auditing over HTTP against a server that reveals {options.reveals}")
        with servers(access, options) as served:
            result = audit(access, served, accesses=(access,))
        rates = _rates(result["rows"])[access]
        summary[f"served_{access}"] = rates
        same = rates == summary["in_process"].get(access)
        say(f"{options.reveals} server: {rates} (the same as in-process: {same})")

    print(json.dumps(summary, indent=2))
    say("done")


def _interrupt_when(log: Path, records: int) -> None:
    """Send this process SIGINT (as Ctrl-C does) once ``log`` holds ``records`` answers."""

    def watch() -> None:
        while len(_records(log)) < records:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    main()
