"""Test hosts on one machine: a network namespace per host, each joined to the
machine by a veth pair on a bridge, in a private /24 of our own. Needs root and
iproute2. Nothing here routes beyond that /24."""

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Tuple

SUBNET = "10.213.47"  # 10.213.47.0/24: the machine's side is .1, the hosts .2, .3, ...


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    namespace: str
    address: str
    link: str  # the machine's end of the host's veth pair

    def command(self, command: List[str]) -> List[str]:
        """`command`, run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def cut_off(self) -> None:
        ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.link, "up")


@contextmanager
def linked_hosts(count: int) -> Iterator[Tuple[str, List[Host]]]:
    """Make `count` hosts; yield the machine's address on their network, and the hosts.

    Everything made here is removed on the way out, also after a failure.
    """
    in_use = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    if f" {SUBNET}." in in_use:
        raise RuntimeError(f"{SUBNET}.0/24 is already in use on this machine: a leftover? see `ip addr`")
    tag = f"fl{os.getpid() % 100000}"
    bridge = f"{tag}br"
    hosts = [Host(f"{tag}ns{i}", f"{SUBNET}.{i + 2}", f"{tag}h{i}") for i in range(count)]
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, host in enumerate(hosts):
            inside = f"{tag}n{i}"
            ip("netns", "add", host.namespace)
            ip("link", "add", host.link, "type", "veth", "peer", "name", inside, "netns", host.namespace)
            ip("link", "set", host.link, "master", bridge, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            ip("-n", host.namespace, "link", "set", inside, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
        yield f"{SUBNET}.1", hosts
    finally:
        for host in hosts:  # deleting a namespace deletes the veth pair in it
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
