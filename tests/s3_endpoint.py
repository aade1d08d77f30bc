"""A real S3 endpoint for the tests: moto in server mode (the S3 HTTP API on a real socket,
credentials checked), and a TCP relay in front of it that can be cut and restored and
that counts the requests it carried."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class Endpoint:
    """A running moto server: its URL and a user's keys (IAM user allowed s3:*)."""

    proc: subprocess.Popen[bytes]
    url: str
    key_id: str
    secret: str

    def client(self, url: str | None = None) -> Any:
        return boto3.client("s3", endpoint_url=url or self.url, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def mapping(self, bucket: str, user: str = "bob", url: str | None = None,
                **extra: Any) -> dict[str, Any]:
        return {"user": user, "type": "S3", "bucket": bucket, "accessKeyId": self.key_id,
                "secretAccessKey": self.secret, "endpointOverride": url or self.url,
                **extra}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_moto() -> Endpoint:
    """moto's server with authentication on: the first three requests (made here) create
    the IAM user whose keys the tests use; any other key is refused."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="jetstream")
        key = iam.create_access_key(UserName="jetstream")["AccessKey"]
        iam.put_user_policy(UserName="jetstream", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Endpoint(proc, url, key["AccessKeyId"], key["SecretAccessKey"])


class Relay:
    """A TCP relay to ``target_port``: ``cut()`` drops every connection and refuses new
    ones (the endpoint is gone), ``restore()`` serves again; ``requests`` counts the
    HTTP requests by kind (``UploadPart``, ``PutObject``, ...)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.requests: Counter[str] = Counter()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # (the cut connections may hold the port for a moment)
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                try:  # (wakes the thread in accept(), which holds the socket open)
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if count:
                    self._count(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _count(self, data: bytes) -> None:
        """Count the request lines in ``data`` (a request line starts a packet as a
        rule: bodies follow their headers; good enough for what the tests count)."""
        for line in data.split(b"\r\n"):
            if line.startswith(b"PUT /") and b" HTTP/1.1" in line:
                target = line.split(b" ")[1]
                kind = "UploadPart" if b"partNumber=" in target else \
                    "PutObject" if b"?" not in target else "Put"
                with self._lock:
                    self.requests[kind] += 1
