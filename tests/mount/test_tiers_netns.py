"""A fleet whose nodes are separate network namespaces, sharing one archive and one shared-cache bucket.

Each node is a network namespace of its own (``ip netns``), joined to this
host by a veth pair on one bridge; its daemon runs there (``nsenter --net``),
while the mount namespace stays shared, so the test reads every node's mount
from here. The archive and the shared-cache bucket sit behind counting proxies
that listen on the bridge address only: nothing a node reads can come through
this host's loopback, and the proxies record which node asked for what.

The control channel is an abstract Unix socket, and those belong to a network
namespace too, so the stats of a node are read from inside that node's namespace
(as ``refmount stats`` would have to be).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.mounting import Mount, mounted
from tests.support.s3proxy import S3Proxy

pytestmark = [pytest.mark.fuse, pytest.mark.s3]

NODES = 4
CHUNK = 256 << 10
SIZE = 24 * CHUNK + 4321  # 25 chunk keys, the last one short


@dataclass(frozen=True)
class Node:
    """One network namespace: its name and its address on the bridge."""

    namespace: str
    address: str

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside this node's network namespace (and no other namespace)."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.namespace}", *command],
                              capture_output=True, text=True, timeout=60, check=check)

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.namespace}"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no interface of this host uses yet."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    used = {ipaddress.ip_interface(word).network for word in shown.split() if "/" in word and word[0].isdigit()}
    for third in range(uuid.uuid4().int % 200, 256):
        subnet = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise AssertionError("no free /24 in 10.213.0.0/16 for the test bridge")


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[str, list[Node]]]:
    """A bridge on this host and ``NODES`` namespaces on it; everything removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    bridge, bridge_address = f"rmbr{tag}", str(hosts[0])
    nodes = [Node(f"refmount-{tag}-{n}", str(hosts[n + 1])) for n in range(NODES)]
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(bridge)
        _ip("addr", "add", f"{bridge_address}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for n, node in enumerate(nodes):
            outside, inside = f"rmh{tag}{n}", f"rmn{tag}{n}"
            _ip("netns", "add", node.namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            made.append(outside)
            _ip("link", "set", inside, "netns", node.namespace)
            _ip("link", "set", outside, "master", bridge, "up")
            for args in (["addr", "add", f"{node.address}/24", "dev", inside], ["link", "set", inside, "up"],
                         ["link", "set", "lo", "up"]):
                _ip("-n", node.namespace, *args)
        yield bridge_address, nodes
    finally:
        for node in nodes:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "delete", node.namespace)
        for link in reversed(made):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "delete", link)


def _stats(node: Node, mount: Mount) -> dict:
    reader = ("import json, sys\nfrom refmount.mount.control import read_stats\n"
              "print(json.dumps(read_stats(sys.argv[1])))")
    done = node.run(sys.executable, "-c", reader, str(mount.path))
    return json.loads(done.stdout)


def _wait_uploads(node: Node, mount: Mount) -> dict:
    deadline = time.monotonic() + 30
    while True:
        figures = _stats(node, mount)
        if figures["shared_cache_queued"] == 0 or time.monotonic() > deadline:
            return figures
        time.sleep(0.1)


def _can_connect(node: Node, endpoint: str) -> bool:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    probe = ("import socket, sys\n"
             "try:\n"
             f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
             "except OSError:\n"
             "    sys.exit(1)\n")
    return node.run(sys.executable, "-c", probe, check=False).returncode == 0


def test_nodes_in_separate_network_namespaces_fetch_each_block_from_the_archive_once(
        local_s3, s3_bucket, fleet, tmp_path):
    bridge_address, nodes = fleet
    shared_bucket = f"t-shared-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(shared_bucket)
    data = os.urandom(SIZE)
    url = f"s3://{s3_bucket}/archive/data.bin"
    local_s3.put(url, data)
    keys = [f"v/{i}" for i in range(-(-SIZE // CHUNK))]
    refs = {key: [url, i * CHUNK, min(CHUNK, SIZE - i * CHUNK)] for i, key in enumerate(keys)}
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps({"version": 1, "refs": refs}))
    credentials = local_s3.storage_options()
    with contextlib.ExitStack() as stack:
        archive = stack.enter_context(S3Proxy(local_s3.endpoint_url, local_s3, listen=bridge_address))
        shared = stack.enter_context(S3Proxy(local_s3.endpoint_url, local_s3, listen=bridge_address))
        options = ["-o", ",".join([
            f"endpoint_url={archive.endpoint_url}", f"s3.key={credentials['key']}", f"s3.secret={credentials['secret']}",
            "block_size=256K", "allow=s3", f"shared_cache=s3://{shared_bucket}/fleet",
            f"shared.endpoint_url={shared.endpoint_url}", f"shared.key={credentials['key']}",
            f"shared.secret={credentials['secret']}"])]
        env = {k: v for k, v in local_s3.env().items() if k.endswith("REGION")}
        # Each namespace has a network stack of its own: the stores' loopback port is out of reach there.
        for node in nodes:
            assert not _can_connect(node, local_s3.endpoint_url), node
            assert _can_connect(node, archive.endpoint_url), node.run("ip", "-4", "addr", check=False).stdout
        mounts = [stack.enter_context(mounted(refs_path, tmp_path / f"node{n}", options, env=env, prefix=node.prefix))
                  for n, node in enumerate(nodes)]
        archive.reset()
        shared.reset()
        per_node = []
        for node, mount in zip(nodes, mounts, strict=True):
            before = archive.counts()["bytes_sent"]
            assert b"".join((mount.path / key).read_bytes() for key in keys) == data
            per_node.append(archive.counts()["bytes_sent"] - before)
            _wait_uploads(node, mount)
        figures = [_stats(node, mount) for node, mount in zip(nodes, mounts, strict=True)]
        # The archive served the dataset once, to the first node; the others read the shared bucket.
        assert per_node == [SIZE] + [0] * (NODES - 1), per_node
        archive_gets = {address for (address, method) in archive.clients if method == "GET"}
        assert archive_gets == {nodes[0].address}, archive.clients
        assert {address for address, _ in shared.clients} == {node.address for node in nodes}, shared.clients
        # Every node took fetch leases (small PUTs and DELETEs under leases/); blocks came from the first node only.
        block_puts = [path for method, path, _ in shared.requests if method == "PUT" and "/leases/" not in path]
        assert len(block_puts) == len(set(block_puts)) == -(-SIZE // (256 << 10)), block_puts
        assert figures[0]["shared_cache_bytes_written"] == SIZE
        for other in figures[1:]:
            assert other["gets"] == 0 and other["shared_cache_bytes_read"] == SIZE, other
            assert other["shared_cache_bytes_written"] == 0, other
        assert not any(fig["shared_cache_corrupt"] for fig in figures)
    with contextlib.suppress(Exception):
        local_s3.delete_bucket(shared_bucket)
