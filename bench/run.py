"""The benchmark: jetstream-server against rsync over ssh and plain TCP (CUBIC and BBR).

    sudo .venv/bin/python bench/run.py PROFILE [PROFILE ...] [--json results.jsonl]
    sudo .venv/bin/python bench/run.py --list

For each profile it builds the lab (bench/netlab.py: two network namespaces joined by the
user-space link emulator bench/linkemu.c, or one namespace for loopback profiles),
checks the emulated round trip, writes the test data once, and moves it with each tool
in turn, every run bounded by ``--max-seconds``:

- jetstream: two jetstream-server processes (receiver in B, sender in A), driven through
  the sender's API by bench/drive.py; seconds from ``createTransfer`` to ``complete``
  (the receiver's verification and fsyncs included); data encrypted, as by default;
- jetstream-plain (with ``--tools``): the same with ``--no-data-encryption`` at both
  ends, to show what encryption costs in the same run;
- rsync over ssh: ``rsync -a`` to an sshd of the benchmark's own in B;
- TCP CUBIC and TCP BBR: ``iperf3 -F FILE`` (reads the same file; the receiver discards).

It prints one table per profile: goodput (file bytes delivered per second, or files per
second), jetstream's ratio to each tool, retransmitted bytes, CPU seconds per GiB on the
sending and receiving end, and seconds. Missing tools (iperf3, rsync, sshd, gcc) are installed
with apt-get when it is there. The lab and all processes are removed on exit, also when a
run fails or is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import Lab, Link, lab, round_trip_ms

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


@dataclass
class Profile:
    about: str
    link: Link | None  # None: loopback
    size_mib: int = 256
    files: int = 1  # more than 1: a folder of that many files of size_kib each
    file_kib: int = 4
    tools: tuple[str, ...] = ("jetstream", "rsync", "cubic", "bbr")
    flows: int = 1
    rate_kbps: int = 0
    competing_tcp_s: int = 0  # run a TCP CUBIC flow (iperf3) this long beside jetstream
    #: the TCP flow starts this long before jetstream joins it (then: a per-second table)
    tcp_lead_s: int = 0
    policies: str = "fair"  # each flow's ratePolicy, in turn
    senders: int = 1  # sending servers (the flows go to them in turn)
    receiver_flags: tuple[str, ...] = ()
    sender_flags: tuple[str, ...] = ()
    #: each tool receives into a fresh ext4 file system (a loop-mounted image), so that
    #: none creates its files among the inodes freed by the run before it (see Workdir)
    fresh_fs: bool = False


#: The scaling profile's numbers of concurrent transfers.
SCALING = (1, 2, 4)
#: Processes serving each server's data plane (it runs in the server's own process).
DATA_WORKERS = 1

PROFILES = {
    "lan": Profile("100 Mbit/s, 0 ms, no loss", Link(100, 0, 0)),
    "wan50": Profile("100 Mbit/s, 50 ms one way, no loss", Link(100, 50, 0)),
    "wan50-loss1": Profile("100 Mbit/s, 50 ms one way, 1% loss", Link(100, 50, 0.01)),
    "wan100-loss5": Profile("100 Mbit/s, 100 ms one way, 5% loss", Link(100, 100, 0.05)),
    "fast": Profile("fastest emulated rate, 10 ms one way, 0.1% loss",
                    Link(700, 10, 0.001), size_mib=1024),
    "loopback": Profile("loopback, no emulator", None, size_mib=2048),
    "smallfiles": Profile("loopback, 10,000 files of 4 KiB", None, files=10000,
                          tools=("jetstream", "rsync"), fresh_fs=True),
    "fairness": Profile("two jetstream transfers at once, 100 Mbit/s, 25 ms one way",
                        Link(100, 25, 0), size_mib=128, flows=2, tools=("jetstream",)),
    "fairness-2s": Profile("two jetstream transfers at once from two sending servers, "
                           "100 Mbit/s, 25 ms one way", Link(100, 25, 0), size_mib=128,
                           flows=2, senders=2, tools=("jetstream",)),
    "tcp-share": Profile("jetstream and a TCP CUBIC flow at once, 100 Mbit/s, 25 ms one way",
                         Link(100, 25, 0), size_mib=256, competing_tcp_s=15,
                         tools=("jetstream",)),
    "ratemax": Profile("sendRateMax 50 Mbit/s on a 100 Mbit/s, 10 ms link",
                       Link(100, 10, 0), size_mib=128, rate_kbps=50000,
                       tools=("jetstream",)),
    # a TCP CUBIC flow runs 30 s; a jetstream transfer of each policy joins it at 5 s and
    # goes on after it (issue 19's rig: 100 Mbit/s, 50 ms round trip, one-BDP queue)
    **{f"share-{policy}": Profile(
        f"TCP CUBIC alone 5 s, then with a jetstream transfer ({policy}) 25 s, then "
        "jetstream alone; 100 Mbit/s, 25 ms one way",
        Link(100, 25, 0), size_mib=512, competing_tcp_s=30, tcp_lead_s=5, policies=policy,
        rate_kbps=50000 if policy == "fixed" else 0, tools=("jetstream",))
       for policy in ("fair", "low", "high", "fixed")},
    "fair-low": Profile("a fair and a low jetstream transfer at once, 100 Mbit/s, 25 ms one way",
                        Link(100, 25, 0), size_mib=256, flows=2, policies="fair,low",
                        tools=("jetstream",)),
    # N transfers at once from N sending servers into one receiver, on loopback: how the
    # data plane scales with the transfers (`scaling` runs 1, 2 and 4 and sums them up)
    **{f"scale-{n}": Profile(
        f"{n} transfer{'s' if n > 1 else ''} at once from {n} sending server"
        f"{'s' if n > 1 else ''} into one receiver, loopback", None, size_mib=1024,
        flows=n, senders=n, tools=("jetstream",)) for n in SCALING},
    "limit-in": Profile("two sending servers, one receiver with --incoming-rate-limit 60000, "
                        "100 Mbit/s, 25 ms one way", Link(100, 25, 0), size_mib=192,
                        flows=2, senders=2, receiver_flags=("--incoming-rate-limit", "60000"),
                        tools=("jetstream",)),
}


@dataclass
class Result:
    tool: str
    seconds: float
    delivered: int  # bytes
    files: int = 0
    retransmitted: int | None = None  # bytes
    cpu_send: float | None = None  # seconds
    cpu_recv: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return self.delivered * 8 / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and of the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tcp_retransmitted_segments(the_lab: Lab) -> int:
    text = subprocess.run(the_lab.argv(the_lab.ns_a, "cat", "/proc/net/snmp"),
                          capture_output=True, text=True, timeout=10).stdout
    header, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    return int(values[header.index("RetransSegs")])


@dataclass
class Usage:
    cpu_send: float = 0.0  # seconds
    cpu_recv: float = 0.0
    retransmitted: int = 0  # bytes


@contextlib.contextmanager
def tcp_usage(the_lab: Lab, server_pid: int) -> Iterator[Usage]:
    """CPU of this process's children (the sending end) and of ``server_pid`` with the
    children it reaped (the receiving end), and TCP segments A retransmitted, while the
    block runs; filled in when it ends."""
    usage = Usage()
    retrans = tcp_retransmitted_segments(the_lab)
    cpu_recv, cpu_send = proc_cpu(server_pid), children_cpu()
    yield usage
    usage.cpu_send = children_cpu() - cpu_send
    usage.cpu_recv = proc_cpu(server_pid) - cpu_recv
    usage.retransmitted = (tcp_retransmitted_segments(the_lab) - retrans) * 1448


def folder_bytes(path: Path) -> tuple[int, int]:
    total = count = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
                count += 1
    return total, count


def ensure_tools() -> None:
    packages = {"iperf3": "iperf3", "rsync": "rsync", "ssh": "openssh-client",
                "gcc": "gcc", "openssh-server": "openssh-server", "mkfs.ext4": "e2fsprogs"}
    missing = [tool for tool in packages  # commands; sshd is looked for below
               if tool != "openssh-server" and shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("openssh-server")
    if missing and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq",
                        *(packages[m] for m in missing)], check=True, env=env, timeout=900)
    elif missing:
        sys.exit(f"missing tools: {' '.join(missing)}")


class Workdir:
    """Test data, the servers' homes, ssh keys; one temporary folder, removed at the end."""

    def __init__(self, base: Path, profile: Profile) -> None:
        self.base = base
        self.fresh_fs = profile.fresh_fs
        self.mounts: list[Path] = []
        self.a_sandbox = base / "a" / "sandbox"
        self.b_sandbox = base / "b" / "sandbox"
        self.rsync_dest = base / "rsync-dest"
        for folder in (self.a_sandbox, self.b_sandbox, self.rsync_dest):
            folder.mkdir(parents=True)
        from jetstream_server.core.users import hash_password, write_users_file
        users = {"alice": hash_password("alice-pw"), "bob": hash_password("bob-pw")}
        for side in "ab":
            write_users_file(base / side / "users", users)
        if profile.files > 1:
            self.source = "/small"
            folder = self.a_sandbox / "small"
            folder.mkdir()
            for n in range(profile.files):
                (folder / f"f{n:05d}.bin").write_bytes(os.urandom(profile.file_kib << 10))
            self.total_bytes = profile.files * (profile.file_kib << 10)
        else:
            self.source = "/big.bin"
            size = profile.size_mib << 20
            with open(self.a_sandbox / "big.bin", "wb") as stream:
                for offset in range(0, size, 64 << 20):
                    stream.write(os.urandom(min(64 << 20, size - offset)))
            self.total_bytes = size
        self.files = profile.files
        os.sync()

    @property
    def source_path(self) -> Path:
        return self.a_sandbox / self.source.lstrip("/")

    def clear_destinations(self) -> None:
        """Empty the receiving folders and let the disk settle, so that no run pays for
        the one before (dirty pages, discards of deleted files).

        With ``fresh_fs``, each receiving folder becomes a new ext4 file system instead:
        on an ext4 without a journal (this machine's), a new inode is not taken from those
        freed in the last 60 s (360 s while their inode table block is dirty), and
        skipping them costs every creation a scan (``recently_deleted`` in
        ``find_inode_bit``: 5-7 us a file became 120-220 us after the run before removed
        its 10,000 files), for whichever tool's folder lands among them."""
        for folder in (self.b_sandbox, self.rsync_dest):
            if self.fresh_fs:
                self._mount_fresh(folder)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
        os.sync()
        time.sleep(1)

    def _mount_fresh(self, folder: Path) -> None:
        self.unmount(folder)
        image = self.base / f"{folder.parent.name}-{folder.name}.img"
        image.unlink(missing_ok=True)
        with open(image, "wb") as stream:
            stream.truncate(4 << 30)  # sparse
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True,
                       timeout=60)
        self.mounts.append(folder)

    def unmount(self, folder: Path | None = None) -> None:
        """Unmount the fresh file systems (one folder's, or all)."""
        for mounted in [m for m in self.mounts if folder is None or m == folder]:
            subprocess.run(["umount", str(mounted)], check=False, timeout=60)
            self.mounts.remove(mounted)


@contextlib.contextmanager
def process(argv: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as stream:
        proc = subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def jetstream_server(the_lab: Lab, ns: str, home: Path, *args: str
                     ) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A jetstream-server in namespace ``ns`` (``args``: more flags): (process, API port,
    data port)."""
    log = home / "server.log"
    argv = the_lab.argv(ns, str(BIN / "jetstream-server"), "--api-host", "127.0.0.1",
                        "--api-port", "0", "--recv-port", "0",
                        "--users-file", str(home / "users"),
                        "--sandbox-dir", str(home / "sandbox"),
                        "--persistent-state-dir", str(home / "state"),
                        "--secret-key-file", str(home / "secret.key"), *args)
    start = log.stat().st_size if log.exists() else 0  # (a server of this home ran before)
    with process(argv, log) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"listening on TCP \S+:(\d+); data port UDP and TCP (\d+)",
                              log.read_bytes()[start:].decode(errors="replace"))
            if match:
                yield proc, int(match.group(1)), int(match.group(2))
                return
            time.sleep(0.05)
        raise RuntimeError("jetstream-server did not start:\n" + log.read_text())


def py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Record where process ``pid`` spends its time (py-spy, speedscope format)."""
    return subprocess.Popen([str(BIN / "py-spy"), "record", "--nonblocking", "--gil", "-r", "200",
                             "-d", str(int(seconds)), "-f", "speedscope", "-o", str(out),
                             "-p", str(pid)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


#: Columns of the driver's samples: (time, bytesSent, blocksRetransmitted, file bytes
#: acknowledged).
SENT, ACKED = 1, 3


def window_rate(samples: list[list[float]], start: float, end: float,
                column: int = SENT) -> float:
    """Mbit/s between two times of one of the driver's counters (bytesSent by default)."""
    inside = [(s[0], s[column]) for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) * 8 / (inside[-1][0] - inside[0][0]) / 1e6


def one_second_rates(samples: list[list[float]]) -> list[float]:
    """Mbit/s sent in each one-second window (sliding by 0.25 s), leaving out the first
    second (the handshake) and the last (the end of the data)."""
    if not samples:
        return [0.0]
    last = samples[-1][0]
    windows, start = [], 1.0
    while start + 1.0 <= last - 1.0:
        windows.append(window_rate(samples, start, start + 1.0))
        start += 0.25
    return windows or [0.0]


@contextlib.contextmanager
def competing_tcp(the_lab: Lab, work: Workdir, seconds: int
                  ) -> Iterator[Callable[[], dict[str, Any]] | None]:
    """A TCP CUBIC flow from A to B for ``seconds``, started now; yields a function that
    waits for it and returns its bytes and seconds (None when ``seconds`` is 0)."""
    if not seconds:
        yield None
        return
    log = work.base / "iperf3-share.json"
    log.unlink(missing_ok=True)
    # one test, its report in JSON: the receiving end's one-second intervals
    with process(the_lab.argv(the_lab.ns_b, "iperf3", "-s", "-1", "-J", "-p", "5202"),
                 log) as server:
        time.sleep(0.5)
        started = time.monotonic()
        client = subprocess.Popen(
            the_lab.argv(the_lab.ns_a, "iperf3", "-c", the_lab.addr_b, "-p", "5202", "-C",
                         "cubic", "-t", str(seconds), "-J"),
            stdout=subprocess.PIPE, text=True)

        def result() -> dict[str, Any]:
            out, _ = client.communicate(timeout=seconds + 30)
            received = json.loads(out)["end"]["sum_received"]
            server.wait(30)
            intervals = [(i["sum"]["start"], i["sum"]["end"],
                          i["sum"]["bits_per_second"] / 1e6)
                         for i in json.loads(log.read_text())["intervals"]]
            return {"bytes": received["bytes"], "seconds": received["seconds"],
                    "started": started, "intervals": intervals}

        try:
            yield result
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()


def run_jetstream(the_lab: Lab, work: Workdir, profile: Profile, limit_s: float,
                  spy_dir: Path | None = None, transport: str = "udp",
                  encrypt: bool = True) -> Result:
    """``encrypt`` False: both servers run with --no-data-encryption (the baseline that
    shows what encryption costs, in the same run)."""
    flags = () if encrypt else ("--no-data-encryption",)
    with contextlib.ExitStack() as stack:
        receiver, _, data_port = stack.enter_context(
            jetstream_server(the_lab, the_lab.ns_b, work.base / "b", *flags,
                             *profile.receiver_flags))
        senders = []
        for n in range(profile.senders):  # (a second sender has its own home, same data)
            home = work.base / "a" if n == 0 else work.base / f"a{n}"
            if n:
                home.mkdir(exist_ok=True)
                shutil.copy(work.base / "a" / "users", home / "users")
                with contextlib.suppress(FileExistsError):
                    (home / "sandbox").symlink_to(work.a_sandbox)
            senders.append(stack.enter_context(jetstream_server(
                the_lab, the_lab.ns_a, home, *flags, *profile.sender_flags)))
        sender = senders[0][0]
        api_ports = ",".join(str(port) for _, port, _ in senders)
        driver = subprocess.Popen(
            the_lab.argv(the_lab.ns_a, sys.executable, str(HERE / "drive.py"), api_ports,
                         f"{the_lab.addr_b}:{data_port}", work.source,
                         "--flows", str(profile.flows), "--transport", transport,
                         "--rate-kbps", str(profile.rate_kbps), "--deadline", str(limit_s),
                         "--policies", profile.policies),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert driver.stdin and driver.stdout
            ready = json.loads(driver.stdout.readline() or "{}")
            if ready.get("ready") != "complete":
                raise RuntimeError(f"manifest not ready: {ready}")
            cpu = sum(proc_cpu(p.pid) for p, _, _ in senders), proc_cpu(receiver.pid)
            tcp = stack.enter_context(competing_tcp(the_lab, work, profile.competing_tcp_s))
            time.sleep(profile.tcp_lead_s)
            go_time = time.monotonic()
            driver.stdin.write("go\n")
            driver.stdin.flush()
            spies = [py_spy(pid, spy_dir / f"{side}.speedscope.json", limit_s)
                     for pid, side in ((sender.pid, "sender"), (receiver.pid, "receiver"))
                     ] if spy_dir else []
            out = driver.stdout.readline()
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
                spy.wait(60)
            cpu_send = sum(proc_cpu(p.pid) for p, _, _ in senders) - cpu[0]
            cpu_recv = proc_cpu(receiver.pid) - cpu[1]
            driver.wait(30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        flows = json.loads(out)["flows"]
        tcp_report = tcp() if tcp else None
    seconds = max(f["seconds"] for f in flows)
    done = all(f["status"] == "complete" for f in flows)
    delivered = sum(f["totalBytes"] if f["status"] == "complete"
                    else min(f["blocksAcked"] * f["blockSize"], f["totalBytes"])
                    for f in flows)
    note = "" if done else ", ".join(
        f"{f['status']} {f['error'] or ''}".strip() for f in flows)
    if len(flows) > 1:  # the shares while all ran, leaving out the first second
        names = profile.policies.split(",")
        print("  second | " + " | ".join(f"flow {n} ({names[n % len(names)]})"
                                         for n in range(len(flows))), flush=True)
        for second in range(int(max(f["seconds"] for f in flows))):
            print(f"  {second:6d} | " + " | ".join(
                f"{acked_rate(f['samples'], second, second + 1):10.1f}" for f in flows))
        until = min(f["seconds"] for f in flows) - 0.5
        rates = [window_rate(f["samples"], 1.0, until) for f in flows]
        note = "while both ran: " + ", ".join(
            f"flow {n} {r:.1f} Mbit/s ({100 * r / sum(rates):.0f}%)"
            for n, r in enumerate(rates)) + (f"; {note}" if note else "")
    extra: dict[str, Any] = {"flows": flows}
    if tcp_report is not None and profile.tcp_lead_s:
        text, summary = share_report(profile, tcp_report, go_time, flows)
        print(text, flush=True)
        extra["share"] = summary
        note = summary["note"] + (f"; {note}" if note else "")
    elif tcp_report is not None:
        tcp_mbps = tcp_report["bytes"] * 8 / tcp_report["seconds"] / 1e6
        ours = window_rate(flows[0]["samples"], 1.0, tcp_report["seconds"])
        note = (f"while TCP CUBIC ran ({tcp_report['seconds']:.0f} s): jetstream {ours:.1f} "
                f"Mbit/s, TCP {tcp_mbps:.1f} Mbit/s ({100 * tcp_mbps / (ours + tcp_mbps):.0f}%"
                " of the two)") + (f"; {note}" if note else "")
    if profile.rate_kbps:
        limit = profile.rate_kbps / 1000
        windows = one_second_rates(flows[0]["samples"])
        note = (f"sendRateMax {limit:.0f} Mbit/s; sent per 1-s window (datagram bytes): "
                f"min {min(windows):.2f}, max {max(windows):.2f} Mbit/s "
                f"({len(windows)} windows)") + (f"; {note}" if note else "")
    return Result(
        f"jetstream ({transport})" if encrypt else f"no-encryption jetstream ({transport})",
        seconds, delivered,
        files=work.files * len(flows) if done else 0,
        retransmitted=sum(f["blocksRetransmitted"] * f["blockSize"] for f in flows),
        cpu_send=cpu_send, cpu_recv=cpu_recv, note=note, extra=extra)


def acked_rate(samples: list[list[float]], start: float, end: float) -> float:
    """Mbit/s of file data acknowledged between two times."""
    return window_rate(samples, start, end, ACKED)


def share_report(profile: Profile, tcp: dict[str, Any], go_time: float,
                 flows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Each second: TCP's goodput (iperf3's receiving end) and each jetstream flow's (file
    bytes acknowledged), on TCP's clock; and the summary: TCP alone, both while both ran
    (from 3 s after jetstream joined), jetstream after TCP stopped."""
    assert profile.link is not None
    link = profile.link.rate_mbps
    join = go_time - tcp["started"]  # jetstream's start on TCP's clock
    tcp_end = tcp["seconds"]
    end = join + max(f["seconds"] for f in flows)
    names = profile.policies.split(",")
    lines = ["  second | TCP CUBIC | " + " | ".join(
        f"jetstream {names[n % len(names)]}" for n in range(len(flows))) + " | TCP share"]

    def tcp_rate(start: float, stop: float) -> float:
        inside = [r for s, e, r in tcp["intervals"] if s >= start - 0.01 and e <= stop + 0.01]
        return sum(inside) / len(inside) if inside else 0.0

    for second in range(int(end)):
        t = tcp_rate(second, second + 1) if second < tcp_end else 0.0
        jets = [acked_rate(f["samples"], second - join, second + 1 - join) for f in flows]
        total = t + sum(jets)
        lines.append(f"  {second:6d} | {t:9.1f} | " + " | ".join(
            f"{j:{len('jetstream ' + names[n % len(names)])}.1f}" for n, j in enumerate(jets))
            + f" | {100 * t / total if total else 0:5.0f}%")
    alone = tcp_rate(1, int(join))
    both_from = int(join) + 3
    tcp_both = tcp_rate(both_from, int(tcp_end))
    jet_both = sum(acked_rate(f["samples"], both_from - join, int(tcp_end) - join)
                   for f in flows)
    after = [sum(acked_rate(f["samples"], s - join, s + 1 - join) for f in flows)
             for s in range(int(tcp_end) + 1, int(end))]
    full_after = next((n + 1 for n, r in enumerate(after) if r >= 0.9 * link), None)
    summary = {
        "tcpAlone": alone, "tcpBoth": tcp_both, "jetstreamBoth": jet_both,
        "tcpShare": tcp_both / link, "jetstreamShare": jet_both / link,
        "fill": (tcp_both + jet_both) / link, "tcpKept": tcp_both / alone if alone else 0,
        "jetstreamAfter": sum(after[2:]) / len(after[2:]) if after[2:] else 0.0,
        "secondsToFillAfter": full_after,
    }
    summary["note"] = (
        f"TCP alone {alone:.1f} Mbit/s; both ({both_from}-{int(tcp_end)} s): TCP "
        f"{tcp_both:.1f} ({100 * tcp_both / link:.0f}% of the link, "
        f"{100 * summary['tcpKept']:.0f}% of alone), jetstream {jet_both:.1f} "
        f"({100 * jet_both / link:.0f}%), link "
        f"{100 * summary['fill']:.0f}% full; after TCP: jetstream "
        f"{summary['jetstreamAfter']:.1f} Mbit/s, over 90% of the link in "
        f"{full_after if full_after is not None else 'never'} s")
    return "\n".join(lines), summary


def run_rsync(the_lab: Lab, work: Workdir, limit_s: float) -> Result:
    ssh_dir = work.base / "ssh"
    ssh_dir.mkdir(exist_ok=True)
    key, host_key = ssh_dir / "id", ssh_dir / "host"
    for path in (key, host_key):
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                           check=True, timeout=30)
    shutil.copy(f"{key}.pub", ssh_dir / "authorized_keys")
    config = ssh_dir / "sshd_config"
    config.write_text(f"Port 22\nHostKey {host_key}\nAuthorizedKeysFile {ssh_dir}/"
                      "authorized_keys\nPermitRootLogin yes\nPasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                      f"PidFile {ssh_dir}/sshd.pid\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    ssh = (f"ssh -i {key} -F /dev/null -o StrictHostKeyChecking=no -o BatchMode=yes "
           "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    source = str(work.source_path)
    with process(the_lab.argv(the_lab.ns_b, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)),
                 work.base / "sshd.log") as sshd:
        time.sleep(0.5)
        with tcp_usage(the_lab, sshd.pid) as usage:
            started = time.monotonic()
            client = subprocess.Popen(
                the_lab.argv(the_lab.ns_a, "rsync", "-a", "-e", ssh, source,
                             f"root@{the_lab.addr_b}:{work.rsync_dest}/"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                out, _ = client.communicate(timeout=limit_s)
                note = "" if client.returncode == 0 else \
                    f"exit {client.returncode}: {out[-200:]!r}"
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
                note = f"stopped at {limit_s:.0f} s"
            seconds = time.monotonic() - started
            delivered, files = folder_bytes(work.rsync_dest)
            time.sleep(0.5)  # let sshd reap its session
    algorithm = subprocess.run(
        the_lab.argv(the_lab.ns_a, "sysctl", "-n", "net.ipv4.tcp_congestion_control"),
        capture_output=True, text=True, timeout=10).stdout.strip()
    return Result(f"rsync over ssh ({algorithm.upper()}, the default)", seconds, delivered,
                  files=files if not note else 0, retransmitted=usage.retransmitted,
                  cpu_send=usage.cpu_send, cpu_recv=usage.cpu_recv, note=note)


def run_iperf3(the_lab: Lab, work: Workdir, algorithm: str, limit_s: float) -> Result:
    with process(the_lab.argv(the_lab.ns_b, "iperf3", "-s", "-p", "5201"),
                 work.base / "iperf3.log") as server:
        time.sleep(0.5)
        with tcp_usage(the_lab, server.pid) as usage:
            started = time.monotonic()
            done = subprocess.run(
                the_lab.argv(the_lab.ns_a, "iperf3", "-c", the_lab.addr_b, "-p", "5201",
                             "-C", algorithm, "-F", str(work.source_path), "-t",
                             str(int(limit_s)), "-J"),
                capture_output=True, text=True, timeout=limit_s + 30)
            seconds = time.monotonic() - started
    report = json.loads(done.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    sent = report["end"]["sum_sent"]["bytes"]
    note = "" if sent >= work.total_bytes else f"stopped at {limit_s:.0f} s"
    return Result(f"TCP {algorithm.upper()} (iperf3)", received["seconds"], received["bytes"],
                  retransmitted=usage.retransmitted, cpu_send=usage.cpu_send,
                  cpu_recv=usage.cpu_recv, note=note, extra={"wallSeconds": seconds})


def table(profile_name: str, profile: Profile, rtt: str, results: list[Result]) -> str:
    # the ratio column is (encrypted) jetstream's, whichever order --tools gave
    jet = next((r for r in results if r.tool.startswith("jetstream")), results[0])
    by_files = profile.files > 1
    unit = "files/s" if by_files else "Mbit/s"

    def rate(r: Result) -> float:
        return r.files_per_s if by_files else r.mbps

    def per_gib(cpu: float | None, r: Result) -> str:
        return "" if cpu is None or not r.delivered else f"{cpu * GIB / r.delivered:.1f}"

    lines = [f"### {profile_name}: {profile.about}",
             "", f"round trip measured: {rtt}; data: "
             + (f"{profile.files} files of {profile.file_kib} KiB" if by_files
                else f"one file of {profile.size_mib} MiB")
             + (f" per transfer, {profile.flows} transfers" if profile.flows > 1 else "")
             + f"; data workers: {DATA_WORKERS} per jetstream server", "",
             f"| tool | goodput ({unit}) | jetstream is x this | retransmitted (MiB) "
             "| CPU s/GiB sender | CPU s/GiB receiver | seconds | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        ratio = f"{rate(jet) / rate(r):.2f}" if rate(r) > 0 and r is not jet else ""
        retrans = "" if r.retransmitted is None else f"{r.retransmitted / (1 << 20):.1f}"
        lines.append(f"| {r.tool} | {rate(r):.1f} | {ratio} | {retrans} | "
                     f"{per_gib(r.cpu_send, r)} | {per_gib(r.cpu_recv, r)} | "
                     f"{r.seconds:.1f} | {r.note} |")
    return "\n".join(lines)


def run_profile(name: str, profile: Profile, limit_s: float, keep_going: bool,
                spy_dir: Path | None = None, keep: bool = False
                ) -> tuple[str, list[Result], dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="jsbench-", dir="/var/tmp"))
    work: Workdir | None = None
    try:
        work = Workdir(base, profile)
        with lab(profile.link) as the_lab:
            median, got = round_trip_ms(the_lab)
            rtt = f"{median:.1f} ms ({got}/20 echoes)"
            if profile.link is not None:
                expected = 2 * profile.link.delay_ms
                rtt += f", expected about {expected:.0f} ms"
                if got == 0 or abs(median - expected) > max(0.2 * expected, 3.0):
                    raise RuntimeError(f"the emulated round trip is wrong: {rtt}")
            print(f"{name}: round trip {rtt}", flush=True)
            results: list[Result] = []
            for tool in profile.tools:
                work.clear_destinations()
                print(f"{name}: {tool} ...", flush=True)
                before = the_lab.counters()
                try:
                    if tool == "jetstream":
                        result = run_jetstream(the_lab, work, profile, limit_s, spy_dir)
                    elif tool == "jetstream-plain":
                        result = run_jetstream(the_lab, work, profile, limit_s, spy_dir,
                                               encrypt=False)
                    elif tool == "rsync":
                        result = run_rsync(the_lab, work, limit_s)
                    else:
                        result = run_iperf3(the_lab, work, tool, limit_s)
                except Exception as exc:  # one tool failing is reported
                    if not keep_going:
                        raise
                    result = Result(tool, 0.0, 0, note=f"failed: {exc}")
                after = the_lab.counters()
                note = result.note
                if before and after:
                    sent = after["aToB"]["packets"] - before["aToB"]["packets"]
                    drops = after["aToB"]["queueDrops"] - before["aToB"]["queueDrops"]
                    result.extra["queueDrops"], result.extra["packets"] = drops, sent
                    share = 100 * drops / max(sent, 1)
                    result.note = f"queue drops {share:.2f}% of {sent} packets"
                    written = after["aToB"].get("writeDrops", 0) - \
                        before["aToB"].get("writeDrops", 0)
                    if written:  # the receiving namespace's kernel refused them
                        result.note += f", {written} dropped on delivery"
                    if note:
                        result.note += f"; {note}"
                print(f"{name}: {result.tool}: {result.mbps:.1f} Mbit/s, "
                      f"{result.files_per_s:.0f} files/s, {result.seconds:.1f} s "
                      f"{result.note}", flush=True)
                results.append(result)
        return table(name, profile, rtt, results), results, the_lab.emulator_counters
    finally:
        if work is not None:
            work.unmount()
        if keep:
            print(f"{name}: kept {base} (logs, data)", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="bound on each tool's run (default 60)")
    parser.add_argument("--size-mib", type=int, help="override the profile's file size")
    parser.add_argument("--rate-mbps", type=float, help="override the link rate")
    parser.add_argument("--tools", help="comma-separated subset: jetstream,rsync,cubic,bbr; "
                        "jetstream-plain is jetstream with --no-data-encryption at both "
                        "ends")
    parser.add_argument("--json", type=Path, help="append results as JSON lines here")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="profile both jetstream servers with py-spy into DIR")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (server logs, data) for a look")
    parser.add_argument("--keep-going", action="store_true",
                        help="report a failing tool in the table instead of stopping")
    args = parser.parse_args()
    if args.list or not args.profiles:
        for name, profile in PROFILES.items():
            print(f"{name:14} {profile.about}")
        print(f"{'scaling':14} scale-{', scale-'.join(map(str, SCALING))} and a summary")
        return
    args.profiles = [p for name in args.profiles
                     for p in ([f"scale-{n}" for n in SCALING] if name == "scaling" else [name])]
    scaled: dict[int, Result] = {}
    unknown = [p for p in args.profiles if p not in PROFILES]
    if unknown:
        sys.exit(f"unknown profile(s): {', '.join(unknown)} (see --list)")
    ensure_tools()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    for name in args.profiles:
        profile = PROFILES[name]
        if args.size_mib:
            profile.size_mib = args.size_mib
        if args.rate_mbps and profile.link:
            profile.link.rate_mbps = args.rate_mbps
        if args.tools:
            profile.tools = tuple(args.tools.split(","))
        spy_dir = None
        if args.py_spy:
            spy_dir = args.py_spy / name
            spy_dir.mkdir(parents=True, exist_ok=True)
        text, results, counters = run_profile(name, profile, args.max_seconds,
                                              args.keep_going, spy_dir, args.keep)
        print("\n" + text + f"\n\nemulator counters: {json.dumps(counters)}\n", flush=True)
        if name.startswith("scale-") and results:
            scaled[profile.flows] = results[0]
        if args.json:
            with args.json.open("a") as stream:
                stream.write(json.dumps({
                    "profile": name, "about": profile.about, "time": time.time(),
                    "results": [{**r.__dict__, "mbps": r.mbps, "filesPerS": r.files_per_s}
                                for r in results], "emulator": counters}) + "\n")
    if len(scaled) > 1:
        print(scaling_table(scaled), flush=True)


def scaling_table(scaled: dict[int, Result]) -> str:
    """The scale-N runs side by side: together, against one alone, each transfer's share."""
    one = scaled.get(1)
    lines = [f"### scaling: N transfers at once from N sending servers into one receiver "
             f"(loopback; data workers: {DATA_WORKERS} per server)", "",
             "| transfers | together (Mbit/s) | x one alone | each (Mbit/s) "
             "| CPU s/GiB senders | CPU s/GiB receiver | retransmitted (MiB) |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for n, r in sorted(scaled.items()):
        each = [f["totalBytes"] * 8 / f["seconds"] / 1e6 for f in r.extra.get("flows", [])
                if f["status"] == "complete" and f["seconds"]]
        ratio = f"{r.mbps / one.mbps:.2f}" if one is not None and one.mbps else ""
        per_gib = [f"{cpu * GIB / r.delivered:.1f}" if cpu is not None and r.delivered
                   else "" for cpu in (r.cpu_send, r.cpu_recv)]
        resent = "" if r.retransmitted is None else f"{r.retransmitted / (1 << 20):.1f}"
        lines.append(f"| {n} | {r.mbps:.1f} | {ratio} | "
                     f"{', '.join(f'{e:.0f}' for e in each)} | {per_gib[0]} | {per_gib[1]} "
                     f"| {resent} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
