"""Audit images/s over HTTP and gRPC beside the server's own capacity: JSON and binary
tensors, 28x28x1 and 224x224x3, against `tracemark serve` and MLServer.

    python bench/http_throughput.py                      # both servers, both sizes
    python bench/http_throughput.py --servers tracemark --sizes 224

Per image size a SmallCNN is built (at 224x224x3 it resizes to 32x32 inside the model, as
deployed models resize their input, so the server's work is mostly reading the request)
and exported: TorchScript for `tracemark serve`, ONNX for MLServer (the runtime in
tests/mlserver/, from .venv-mlserver). Each server runs in its own process. Then, per
server, wire (JSON; binary where the server lists the extension in GET /v2; gRPC with
raw tensors where the server has a gRPC API: MLServer) and setting
(batch size x concurrency):

- capacity: a plain client (one pooled httpx client, CONCURRENCY threads) posts one
  pre-encoded request of BATCH images over and over: what the server answers when the
  client does nothing else;
- audit: `HttpOracle.query` on distinct fresh images, with a query log, as an audit
  sends them (encode, hash, send, decode, check, log);
- in-process: the same images through the same TorchScript file in this process.

Each setting is measured as --repeats pairs, the capacity then the audit, back to back:
the figures are the best of each, and "paired" the median of each pair's audit /
capacity (the servers' own speed moves between measurements: MLServer's by a third).
Prints a table (best capacity per server and wire, and the audit at that setting) and
a JSON summary.

With --pin (2 cores or more) the server runs on the last core (one thread) and the client
on the others, as a server on another machine would: the capacity is then the server's
own, not what is left of a core the client also uses, and audit / capacity says whether
the audit's client keeps up with it.

MLServer 1.7's REST server does not implement the binary extension (SeldonIO/MLServer
issue 324): its raw tensors are its gRPC API's, measured as the wire "grpc".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tracemark.models import build_model
from tracemark.oracle import EndpointConfig, load_oracle, open_endpoint
from tracemark.oracle.grpc import open_grpc_endpoint
from tracemark.oracle.wire import V2Codec
from tracemark.training import export_onnx, export_torchscript

ROOT = Path(__file__).resolve().parents[1]
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
RUNTIME = ROOT / "tests" / "mlserver" / "onnx_runtime.py"
SHAPES = {28: (28, 28, 1), 224: (224, 224, 3)}
IMAGES = {28: 8192, 224: 3072}  # per audit measurement: a few seconds at capacity


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{url}/ready").status_code == 200:
                    return
            time.sleep(0.2)
    raise SystemExit(f"the server was not ready in {timeout} s: {log.read_text()[-2000:]}")


SERVER_CORES: set[int] | None = None  # --pin: the server's cores (the client has the rest)


def _server_process_setup() -> None:
    """In the server's process before it starts: its own session, and its cores (--pin)."""
    os.setsid()
    if SERVER_CORES is not None:
        os.sched_setaffinity(0, SERVER_CORES)


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    if SERVER_CORES is not None:  # one thread per pinned core, not one per machine core
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(len(SERVER_CORES))
    return env


@contextlib.contextmanager
def tracemark_server(model: Path, tmp: Path):
    """`tracemark serve MODEL` in its own process; yields the model's v2 URL."""
    url_file, log = tmp / "serve.url", tmp / "serve.log"
    url_file.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "tracemark", "serve", str(model), "--port", "0"]
    cli += ["--name", "m", "--url-file", str(url_file)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cli,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            preexec_fn=_server_process_setup,
        )
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        url = url_file.read_text().strip() + "/v2/models/m"
        _wait_ready(url, proc, log)
        yield url, None
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@contextlib.contextmanager
def mlserver(onnx: Path, shape: tuple[int, int, int], tmp: Path):
    """Seldon MLServer serving the ONNX file; yields the model's v2 URL."""
    repo = tmp / "mlserver-repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "m").mkdir(parents=True)
    shutil.copy(RUNTIME, repo / RUNTIME.name)
    http_port, grpc_port, metrics_port = _free_ports(3)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "metrics_endpoint": None,
        "parallel_workers": 0,
        "debug": False,
        # gRPC messages up to 256 MB (its default, 4 MB, is 6 images at 224x224x3)
        "grpc_max_message_length": 256 << 20,
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    h, w, c = shape
    model_settings = {
        "name": "m",
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": str(onnx)},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    (repo / "m" / "model-settings.json").write_text(json.dumps(model_settings))
    env = {k: v for k, v in _server_env().items() if not k.startswith("MLSERVER")}
    env.pop("PYTHONPATH", None)
    log = tmp / "mlserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(repo)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_server_process_setup,
        )
    url = f"http://127.0.0.1:{http_port}/v2/models/m"
    try:
        _wait_ready(url, proc, log)
        yield url, f"grpc://127.0.0.1:{grpc_port}/v2/models/m"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@contextlib.contextmanager
def client_cores(pin: bool, cores: list[int]):
    """With --pin, this process (the client) on the cores the server does not use."""
    if not pin:
        yield
        return
    every = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, every)


def offers_binary(url: str) -> bool:
    base = url.split("/v2/models/")[0]
    meta = httpx.get(f"{base}/v2", trust_env=False).json()
    return "binary_tensor_data" in (meta.get("extensions") or [])


def capacity(url: str, wire: str, images: np.ndarray, concurrency: int, seconds: float) -> float:
    """Images/s a plain concurrent client gets, re-sending one pre-encoded request."""
    if wire == "grpc":
        return _grpc_capacity(url, images, concurrency, seconds)
    codec = V2Codec("m", input_name="input", layout="nchw", binary=wire == "binary")
    request = codec.request(images)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(trust_env=False, timeout=120.0, limits=limits) as client:

        def post() -> None:
            r = client.post(url + "/infer", content=request.content, headers=request.headers)
            r.raise_for_status()

        return _concurrently(post, len(images), concurrency, seconds)


def _grpc_capacity(url: str, images: np.ndarray, concurrency: int, seconds: float) -> float:
    """The same over gRPC: one serialised ModelInferRequest, answers left unparsed."""
    import grpc

    from tracemark.oracle.grpc_messages import SERVICE, messages

    m = messages()
    x = V2Codec("m", input_name="input", layout="nchw").input_tensor(images)
    tensor = m.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    body = m.ModelInferRequest(
        model_name="m", inputs=[tensor], raw_input_contents=[x.tobytes()]
    ).SerializeToString()
    target = url.removeprefix("grpc://").split("/")[0]
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        infer = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        return _concurrently(lambda: infer(body, timeout=120), len(images), concurrency, seconds)


def _concurrently(call, per_call: int, concurrency: int, seconds: float) -> float:
    """Images/s of ``call`` (``per_call`` images each) made from ``concurrency`` threads."""
    counts = [0] * concurrency

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            call()
            counts[i] += per_call

    call()  # warm
    start = time.monotonic()
    stop = start + seconds
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def audit_rate(
    url: str, wire: str, images: np.ndarray, batch: int, concurrency: int, log: Path
) -> float:
    """Images/s of the audit's oracle (`HttpOracle`, `GrpcOracle`) on distinct images,
    with a query log."""
    config = EndpointConfig(
        binary="on" if wire == "binary" else "off",
        batch_size=batch,
        concurrency=concurrency,
        input_name="input",
        layout="nchw",
    )
    log.unlink(missing_ok=True)
    opener = open_grpc_endpoint if wire == "grpc" else open_endpoint
    with opener(url, config, log=log) as oracle:
        oracle.query(images[:batch])  # warm: connections, the metadata
        start = time.perf_counter()
        oracle.query(images[batch:])
        return (len(images) - batch) / (time.perf_counter() - start)


def audit_images(available: int, batch: int, concurrency: int, at_capacity: float) -> int:
    """Images per audit measurement: about twice what the server answers in the capacity
    measurement's time (JSON at 224 is slow), in whole batches, and one to warm up."""
    n = int(min(available, max(2 * batch * concurrency, 2 * at_capacity)))
    return batch * (n // batch) + batch


def in_process_rate(model: Path, images: np.ndarray, batch: int) -> float:
    oracle = load_oracle(model)
    oracle.batch_size = batch
    oracle.query(images[:batch])
    start = time.perf_counter()
    oracle.query(images[batch:])
    return (len(images) - batch) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="28,224")
    ap.add_argument("--servers", default="tracemark,mlserver")
    ap.add_argument(
        "--batches", default=None, help="images per request, swept (default 64,256; 16,64 at 224)"
    )
    ap.add_argument("--concurrencies", default="2,4", help="requests in flight (swept)")
    ap.add_argument("--seconds", type=float, default=4.0, help="per capacity measurement")
    ap.add_argument("--wires", default="json,binary,grpc", help="which wires to measure")
    ap.add_argument(
        "--repeats", type=int, default=2, help="pairs (capacity, then audit) per setting"
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the server on the last core, the client on the others (as if remote)",
    )
    args = ap.parse_args()
    global SERVER_CORES
    cores = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cores) < 2:
            raise SystemExit("--pin needs 2 cores or more")
        SERVER_CORES = {cores[-1]}
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="tracemark-http-throughput-"))
    rng = np.random.default_rng(0)
    rows, summary = [], {"cores": os.cpu_count(), "results": []}
    pinned = f"; server on core {cores[-1]}, client on {cores[:-1]}" if args.pin else ""
    print(f"cores: {os.cpu_count()}{pinned}", flush=True)
    summary["pinned"] = args.pin
    for size in (int(s) for s in args.sizes.split(",")):
        h, w, c = SHAPES[size]
        given = args.batches or ("64,256" if size == 28 else "16,64")
        batches = [int(b) for b in given.split(",")]
        net = build_model("small-cnn", in_channels=c, input_size=None if size == 28 else 32)
        net.eval()
        script, onnx = tmp / f"m{size}.pt", tmp / f"m{size}.onnx"
        export_torchscript(net, script, force=True)
        export_onnx(net, onnx, (c, h, w), force=True)
        # 8-bit values, as an audit reads them from image files
        images = rng.integers(0, 256, (IMAGES[size], h, w, c)).astype(np.float32) / np.float32(255)
        local = {b: in_process_rate(script, images, b) for b in batches}
        print(
            f"{size}: in-process {', '.join(f'{v:.0f}' for v in local.values())} img/s", flush=True
        )
        for server in args.servers.split(","):
            if server == "mlserver" and not MLSERVER.exists():
                print("MLServer is not installed (bash scripts/setup.sh): skipped")
                continue
            start = (
                tracemark_server(script, tmp)
                if server == "tracemark"
                else mlserver(onnx, (h, w, c), tmp)
            )
            with start as (url, grpc_url), client_cores(args.pin, cores[:-1]):
                wires = ["json", "binary"] if offers_binary(url) else ["json"]
                wires += ["grpc"] if grpc_url is not None else []
                wires = [w for w in wires if w in args.wires]
                for wire in wires:
                    target = grpc_url if wire == "grpc" else url
                    best = None
                    for b in batches:
                        for k in concurrencies:
                            caps, auds = [], []
                            for _ in range(args.repeats):  # pairs, timed back to back
                                caps.append(capacity(target, wire, images[:b], k, args.seconds))
                                n = audit_images(len(images), b, k, args.seconds * caps[0])
                                auds.append(
                                    audit_rate(target, wire, images[:n], b, k, tmp / "q.jsonl")
                                )
                            cap, aud = max(caps), max(auds)
                            paired = float(
                                np.median([a / c for a, c in zip(auds, caps, strict=True)])
                            )
                            result = {
                                "size": size,
                                "server": server,
                                "wire": wire,
                                "batch": b,
                                "concurrency": k,
                                "capacity": round(cap, 1),
                                "audit": round(aud, 1),
                                "paired": round(paired, 2),
                                "in_process": round(local[b], 1),
                            }
                            summary["results"].append(result)
                            print(json.dumps(result), flush=True)
                            if best is None or cap > best["capacity"]:
                                best = result
                    if best is not None:
                        rows.append(best)
                if not wires:
                    print(f"{size}: {server} does not offer {args.wires}", flush=True)
    print()
    print(
        "| size | server | wire | batch x concurrency | server capacity (img/s) | audit (img/s) "
        "| audit / capacity | paired (median) | in-process (img/s) | in-process / audit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['server']} | {r['wire']} | {r['batch']} x {r['concurrency']} | "
            f"{r['capacity']:.0f} | {r['audit']:.0f} | {r['audit'] / r['capacity']:.2f} | "
            f"{r['paired']:.2f} | "
            f"{r['in_process']:.0f} | {r['in_process'] / r['audit']:.2f} |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
