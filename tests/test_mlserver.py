"""An audit of a model served by a real third-party server: Seldon MLServer (v2 protocol).

MLServer runs from its own virtualenv (.venv-mlserver, made by scripts/setup.sh; its
dependencies conflict with tracemark's) with the small custom runtime in
tests/mlserver/onnx_runtime.py serving the session model exported to ONNX. The audit
over HTTP must give exactly the verdict of the same audit run on the ONNX file, its
query log must hold every image once, and `tracemark replay` must recompute it.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers import live_processes, run_cli

ROOT = Path(__file__).resolve().parents[1]
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
RUNTIME = Path(__file__).resolve().parent / "mlserver" / "onnx_runtime.py"
MODEL = "fmnist-cnn"
STARTUP_TIMEOUT = 120.0

pytestmark = pytest.mark.slow


@dataclass
class Server:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    onnx: Path
    log: Path
    startup_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}/v2/models/{MODEL}"


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held together while choosing)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _group_pids(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (zombies hold no sockets)."""
    return live_processes(lambda fields: int(fields[2]) == pgid)


def _decode_proc_addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from /proc/net/tcp{,6}: host-order 32-bit words, in hex."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _listening(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket any of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    host, port = local.split(":")
                    found.append((str(_decode_proc_addr(host)), int(port, 16)))
    return found


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    deadline = time.monotonic() + 15
    while _group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # workers, if any, end after the main process
    leftover = _group_pids(proc.pid)
    if leftover:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not leftover, f"MLServer processes {leftover} outlived SIGTERM"


@pytest.fixture(scope="session", autouse=True)
def mlserver_installed():
    """Fail (not skip: CI must run this) before the session model is trained."""
    if not os.access(MLSERVER, os.X_OK):
        pytest.fail(
            f"MLServer is not installed ({MLSERVER} is missing): run `bash scripts/setup.sh`, "
            "which installs it into .venv-mlserver",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def mlserver(mlserver_installed, marked_world, exported_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlserver")
    onnx = exported_models / "trained.onnx"
    repo = tmp / "repo"
    (repo / MODEL).mkdir(parents=True)
    shutil.copy(RUNTIME, repo / RUNTIME.name)  # `mlserver start` puts its folder on sys.path
    http_port, grpc_port, metrics_port = _free_ports(3)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "metrics_endpoint": None,  # no metrics server
        "parallel_workers": 0,  # inference in the server process itself
        "debug": False,
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MODEL,
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": str(onnx)},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    (repo / MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    # MLSERVER_* variables would override settings.json; tracemark's PYTHONPATH is no use.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    env.pop("PYTHONPATH", None)
    log = tmp / "mlserver.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(repo)],
            cwd=tmp,  # MLServer keeps .envs/.metrics folders in its working directory
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    server = Server(proc, http_port, grpc_port, metrics_port, onnx, log, 0.0)
    try:
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"MLServer exited with status {proc.returncode} while starting; "
                        f"its log ends:\n{_tail(log)}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{server.url}/ready").status_code == 200:
                        break
                if time.monotonic() - started > STARTUP_TIMEOUT:
                    pytest.fail(
                        f"MLServer's model was not ready after {STARTUP_TIMEOUT:.0f} s; "
                        f"its log ends:\n{_tail(log)}"
                    )
                time.sleep(0.2)
        server.startup_s = time.monotonic() - started
        print(f"MLServer ready in {server.startup_s:.1f} s")
        yield server
    finally:
        _stop(proc)
    assert not _accepts(http_port), f"port {http_port} still accepts connections after SIGTERM"


def _cli_json(args: list) -> dict:
    """Run the CLI in-process; its JSON verdict (exit status 0 asserted)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run_cli(args)
    assert status == 0, f"tracemark {args[0]} exited {status}"
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def audit_args(marked_world):
    """The options shared by the HTTP audit, the local audit and the replay."""
    return [
        "--marked",
        marked_world.cli_marked,
        "--originals",
        marked_world.cli_originals,
        "--label",
        str(marked_world.classes[0]),
        "--n-pseudo",
        "100",
        "--json",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def remote(mlserver, marked_world, audit_args, tmp_path_factory):
    """The audit through MLServer: (verdict, query log, seconds)."""
    log = tmp_path_factory.mktemp("audit") / "q.jsonl"
    started = time.monotonic()
    verdict = _cli_json(
        ["audit", marked_world.cli_key, mlserver.url, *audit_args, "--query-log", log]
    )
    return verdict, log, time.monotonic() - started


def test_mlserver_listens_on_loopback_only(mlserver):
    sockets = _listening(_group_pids(mlserver.proc.pid))
    ports = {port for _, port in sockets}
    assert {mlserver.http_port, mlserver.grpc_port} <= ports, sockets
    assert mlserver.metrics_port not in ports  # metrics are switched off
    exposed = [(a, p) for a, p in sockets if not ipaddress.ip_address(a).is_loopback]
    assert not exposed, f"MLServer listens beyond loopback: {exposed}"


def test_audit_through_mlserver_matches_the_onnx_file(remote, mlserver, marked_world, audit_args):
    v, _, _ = remote
    assert v["method"] == "tracker" and v["decision"] is True
    assert v["p_value"] == pytest.approx(1 / 101) and v["label"] == marked_world.classes[0]
    assert v["effect"] > 0
    local = _cli_json(["audit", marked_world.cli_key, mlserver.onnx, *audit_args])
    print(
        f"MLServer: p={v['p_value']!r} effect={v['effect']!r}; "
        f"ONNX file: p={local['p_value']!r} effect={local['effect']!r}"
    )
    assert local["decision"] is True
    assert v["p_value"] == local["p_value"]
    assert v["effect"] == pytest.approx(local["effect"], rel=0, abs=1e-12)
    assert v["queries"] == local["queries"] == 30 + 100 * 30


def test_query_log_holds_each_image_once(remote, mlserver):
    v, log, _ = remote
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    assert isinstance(header, dict) and header["format"] == "tracemark-query-log"
    assert header["endpoint"] == f"http://127.0.0.1:{mlserver.http_port}"
    assert header["protocol"] == "v2" and header["model_name"] == MODEL
    records = [json.loads(line) for line in lines[1:]]
    hashes = [r["sha256"] for r in records]
    assert len(set(hashes)) == len(hashes)
    assert all(len(r["answer"]["output"]) == 10 for r in records)
    assert len(records) == v["queries"]


def test_replay_recomputes_the_verdict(remote, marked_world, audit_args):
    v, log, _ = remote
    replayed = _cli_json(["replay", log, marked_world.cli_key, *audit_args])
    assert replayed["decision"] is True
    assert replayed["p_value"] == v["p_value"]
    assert replayed["effect"] == v["effect"]


@pytest.fixture(scope="module")
def remote_grpc(mlserver, marked_world, audit_args, tmp_path_factory):
    """The same audit through MLServer's gRPC API (raw FP32 tensors): (verdict, log)."""
    log = tmp_path_factory.mktemp("audit-grpc") / "q.jsonl"
    verdict = _cli_json(
        ["audit", marked_world.cli_key, mlserver.grpc_url, *audit_args, "--query-log", log]
    )
    return verdict, log


def test_audit_over_grpc_matches_http_and_replays(
    remote_grpc, remote, mlserver, marked_world, audit_args
):
    v, log = remote_grpc
    over_http = remote[0]
    assert v["decision"] is True and v["queries"] == over_http["queries"]
    assert v["p_value"] == over_http["p_value"]
    assert v["effect"] == pytest.approx(over_http["effect"], rel=0, abs=1e-12)
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["protocol"] == "v2-grpc" and header["model_name"] == MODEL
    assert header["endpoint"] == f"grpc://127.0.0.1:{mlserver.grpc_port}"
    records = [json.loads(line) for line in lines[1:]]
    assert sum("sha256" in r for r in records) == v["queries"]  # each image once
    assert all(r["batch"]["wire"] == "grpc" for r in records if "batch" in r)  # replies kept
    replayed = _cli_json(["replay", log, marked_world.cli_key, *audit_args])
    assert replayed["p_value"] == v["p_value"] and replayed["effect"] == v["effect"]
