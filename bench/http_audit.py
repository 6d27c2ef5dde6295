"""The tracker demo's audit over HTTP: identical to in-process, under faults, after SIGINT.

    python bench/http_audit.py --quick        # the quick demo's users and models (minutes)
    python bench/http_audit.py                # the full demo's (about an hour on 2 cores)

Trains the tracker demo's two models, audits every user in-process, then serves each
model with `tracemark serve` (uvicorn on 127.0.0.1) and audits again over the Open
Inference Protocol v2:

1. plainly, with a query log: every user's p-value compared with the in-process one;
2. with 30% of requests failing (500 or 429) and random latency: verdicts compared,
   and the server's access log checked for images answered twice;
3. interrupted by SIGINT once the log is 40% full, then re-run with the same log:
   verdicts compared, repeats counted;
4. against servers that reveal only the top 5 labels, or only the label: TPR and FPR
   next to the full-probability figures.

Prints one line per check and a JSON summary.
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

from tracemark.demos.tracker import (
    TrackerDemoConfig,
    audit_tracker_world,
    prepare_tracker_demo,
)
from tracemark.oracle import EndpointConfig, open_endpoint
from tracemark.serve import FaultPlan, ServeOptions, create_app, serving
from tracemark.training import export_torchscript

PARTS = ("plain", "faults", "sigint", "topk", "label")


PARTS = ("plain", "faults", "sigint", "topk", "label")


def _records(path: Path) -> list[str]:
    """Image hashes answered in a query log (a line being written is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines()[1:]:
        with suppress(ValueError):
            out.append(json.loads(line)["sha256"])
    return out


def _served(path: Path) -> list[str]:
    return [json.loads(line)["sha256"] for line in path.read_text().splitlines()]


def _compare(a: dict, b: dict) -> dict:
    """How many users' verdicts are identical (p-value, effect, decision) between runs."""
    keys = ("p_value", "effect", "decision")
    pairs = list(zip(a["users"], b["users"], strict=True))
    same = sum(all(x[k] == y[k] for k in keys) for x, y in pairs)
    worst = max(abs(x["p_value"] - y["p_value"]) for x, y in pairs)
    return {"audits": len(pairs), "identical": same, "max_abs_p_difference": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick demo's sizes")
    ap.add_argument("--nonmembers", type=int, help="override the number of non-member users")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--parts", default=",".join(PARTS), help="which checks to run")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        ap.error(f"--parts takes some of {','.join(PARTS)}")
    config = TrackerDemoConfig.quick() if args.quick else TrackerDemoConfig()
    if args.nonmembers is not None:
        config = replace(config, nonmembers=args.nonmembers)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    world = prepare_tracker_demo(config, stage=say)
    say("auditing in-process")
    local = audit_tracker_world(world)
    summary: dict = {"config": {"users": world.users, "n_pseudo": config.n_pseudo}}
    summary["in_process"] = local["by_access"]

    tmp = Path(tempfile.mkdtemp(prefix="tracemark-http-bench-"))
    files = {}
    for name, model in world.models.items():
        files[name] = tmp / f"{name}.pt"
        export_torchscript(model, files[name], example=world.marked[0][:2])

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
        """Every user audited against the served models, each with its own query log."""
        cfg = EndpointConfig(
            concurrency=args.concurrency,
            backoff=0.01,
            max_backoff=0.2,
            retries=50,
            num_classes=10,  # top-K and label answers do not say how many classes there are
        )
        with ExitStack() as stack:
            oracles = {}
            for name, (url, _) in served.items():
                log = tmp / f"{tag}-{name}-queries.jsonl"
                oracles[name] = stack.enter_context(
                    open_endpoint(f"{url}/v2/models/cnn", cfg, log=log)
                )
            if interrupt_at is not None:
                _interrupt_when(tmp / f"{tag}-trained-on-members-queries.jsonl", interrupt_at)
            t = time.perf_counter()
            result = audit_tracker_world(world, oracles=oracles, accesses=accesses)
            result["http_seconds"] = round(time.perf_counter() - t, 1)
            result["traffic"] = {
                n: {"sent": o.queries, "requests": o.requests, "retried": o.retried,
                    "from_log": o.from_log, "failures": dict(o.failures)}
                for n, o in oracles.items()
            }  # fmt: skip
            return result

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
        summary["plain"] = {
            **_compare(local, plain),
            "seconds": plain["http_seconds"],
            "traffic": plain["traffic"],
        }
        say(f"HTTP vs in-process: {summary['plain']}")

    if "faults" in parts:
        say("auditing over HTTP with 30% of requests failing (500/429) and up to 50 ms latency")
        plan = FaultPlan(error_rate=0.3, error_codes=(500, 429), latency=0.05)
        with servers("faults", ServeOptions(faults=plan, seed="0f")) as served:
            faulty = audit("faults", served)
        summary["faults"] = {
            **_compare(local, faulty),
            "traffic": faulty["traffic"],
            "images_answered_twice": repeats(served),
            "seconds": faulty["http_seconds"],
        }
        say(f"under faults: {summary['faults']}")

    if "sigint" in parts:
        total = local["models"]["trained-on-members"]["queries"]
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
            **_compare(local, resumed),
            "answers_logged_before_interrupt": kept,
            "sent_after_resume": {n: t["sent"] for n, t in resumed["traffic"].items()},
            "images_answered_twice": repeats(served),
        }
        say(f"interrupted and resumed: {summary['sigint']}")

    restricted = {"topk": ServeOptions(top_k=config.top_k), "label": ServeOptions(label_only=True)}
    for access, options in restricted.items():
        if access not in parts:
            continue
        say(f"auditing over HTTP against a server that reveals {options.reveals}")
        with servers(access, options) as served:
            result = audit(access, served, accesses=(access,))
        block = result["by_access"][access]
        summary[f"served_{access}"] = block
        same = {
            k: block[k] == local["by_access"][access][k] for k in ("tpr", "fpr", "fpr_clean_model")
        }
        say(f"{options.reveals} server: {block} (same rates as in-process: {same})")

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
