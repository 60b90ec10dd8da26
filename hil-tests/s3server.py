"""The S3 side of the HIL tests: moto's S3 server on the host's loopback, and a TCP proxy in
front of it whose upstream rate the tests can limit (a slow WAN, so that a power cut lands in
the middle of a drain). The box reaches the proxy as 10.0.2.2:<port> through QEMU user
networking, which maps 10.0.2.2 to the host's 127.0.0.1."""

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config

# moto accepts any credentials; these are what the box's configuration carries.
ACCESS_KEY_ID = "hil-access-key"
SECRET_ACCESS_KEY = "hil-secret-key"
REGION = "us-east-1"
MOTO_START_TIMEOUT_SECONDS = 30
# Relay buffer; small while throttled so the rate is smooth for every connection.
RELAY_CHUNK_BYTES = 64 * 1024
RELAY_CHUNK_THROTTLED_BYTES = 16 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto_server (from the test virtualenv) listening on 127.0.0.1 only."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).with_name("moto_server")
        self._log = open(log_path, "wb")
        self._proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )
        deadline = time.monotonic() + MOTO_START_TIMEOUT_SECONDS
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited ({self._proc.returncode}), see {log_path}")
            try:
                self.client.list_buckets()
                return
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)

    def stop(self):
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


class ThrottledProxy:
    """Relays TCP connections from 127.0.0.1:<port> to an upstream port. `rate` (bytes per
    second, None for unlimited) limits the bytes sent upstream, across all connections;
    `upstream_bytes` counts them."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rate = None
        self.upstream_bytes = 0
        self._lock = threading.Lock()
        self._next_send = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self._stopped = True
        self._listener.close()

    def _accept(self):
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _wait_for_budget(self, n: int):
        with self._lock:
            rate = self.rate
            self.upstream_bytes += n
            if not rate:
                return
            now = time.monotonic()
            start = max(now, self._next_send)
            self._next_send = start + n / rate
            delay = self._next_send - now
        if delay > 0:
            time.sleep(delay)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool):
        try:
            while True:
                size = RELAY_CHUNK_THROTTLED_BYTES if (upstream and self.rate) else RELAY_CHUNK_BYTES
                data = src.recv(size)
                if not data:
                    break
                if upstream:
                    self._wait_for_budget(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of_object(client, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def wait_for_object(client, bucket: str, key: str, timeout: float) -> dict:
    """HEAD the object until it exists; returns the HEAD answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"s3://{bucket}/{key} did not appear within {timeout:.0f}s")
        time.sleep(0.5)
