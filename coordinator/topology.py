"""Where the replicas of each shard are: a static JSON file, or DNS names of headless Services.

A topology is ``{shard: (address, ...)}`` with shards ``0..N-1``. Sources are re-resolved
periodically by the server; the resolver is injectable so DNS discovery is testable offline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cbir.errors import InvalidArgument

log = logging.getLogger(__name__)

Topology = dict[int, tuple[str, ...]]


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); raises ValueError when malformed."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port_text)


class TopologyFile(BaseModel):
    """``{"shards": {"0": ["10.0.0.1:50051", ...], "1": [...]}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shards: dict[int, list[str]]

    @field_validator("shards")
    @classmethod
    def _addresses(cls, shards: dict[int, list[str]]) -> dict[int, list[str]]:
        for shard, addresses in shards.items():
            if not addresses:
                raise ValueError(f"shard {shard} has no replica address")
            if len(set(addresses)) != len(addresses):
                raise ValueError(f"shard {shard} lists an address twice")
            for address in addresses:
                split_address(address)
        return shards

    @model_validator(mode="after")
    def _contiguous(self) -> TopologyFile:
        expected = set(range(len(self.shards)))
        if not self.shards or set(self.shards) != expected:
            raise ValueError(
                f"shards must be numbered 0..N-1, got {sorted(self.shards)}"
            )
        return self

    def topology(self) -> Topology:
        return {s: tuple(a) for s, a in sorted(self.shards.items())}


def load_topology_file(path: str | Path) -> TopologyFile:
    try:
        raw = json.loads(Path(path).read_text())
        return TopologyFile.model_validate(raw)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"topology file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"topology file {path} is not JSON: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"bad topology file {path}: {where}: {first['msg']}") from exc


class TopologySource(Protocol):
    num_shards: int

    async def resolve(self, previous: Mapping[int, tuple[str, ...]]) -> Topology: ...


class StaticTopology:
    def __init__(self, topology: Topology) -> None:
        self._topology = dict(topology)
        self.num_shards = len(topology)

    @classmethod
    def from_file(cls, path: str | Path) -> StaticTopology:
        return cls(load_topology_file(path).topology())

    async def resolve(self, previous: Mapping[int, tuple[str, ...]]) -> Topology:
        return dict(self._topology)


# hostname -> IPv4 addresses; raises LookupError when the name has none (NXDOMAIN / no A
# records) and any other exception when the lookup itself failed (timeout, SERVFAIL).
HostResolver = Callable[[str], Awaitable[list[str]]]


class DnsTopology:
    """One DNS name per shard (a headless Service); every A record is a replica."""

    def __init__(self, template: str, num_shards: int, resolver: HostResolver) -> None:
        if num_shards <= 0:
            raise InvalidArgument(f"--shards must be positive, got {num_shards}")
        if "{shard" not in template:
            raise InvalidArgument(f"DNS template needs a {{shard}} field: {template!r}")
        try:
            split_address(template.format(shard=0))
        except (ValueError, KeyError, IndexError) as exc:
            raise InvalidArgument(f"bad DNS template {template!r}: {exc}") from exc
        self.template = template
        self.num_shards = num_shards
        self._resolver = resolver

    async def resolve(self, previous: Mapping[int, tuple[str, ...]]) -> Topology:
        topology: Topology = {}
        for shard in range(self.num_shards):
            host, port = split_address(self.template.format(shard=shard))
            try:
                ips = await self._resolver(host)
            except LookupError:
                ips = []  # the name exists no more / has no ready replica
            except Exception as exc:
                # A failed lookup says nothing about the replicas: keep what we had.
                log.warning("resolving %s failed (%s); keeping %d replicas", host, exc,
                            len(previous.get(shard, ())))
                topology[shard] = tuple(previous.get(shard, ()))
                continue
            topology[shard] = tuple(f"{_bracket(ip)}:{port}" for ip in sorted(set(ips)))
        return topology


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def dnspython_resolver(dns_server: str | None = None, timeout_s: float = 2.0) -> HostResolver:
    """A-record lookups with dnspython; ``dns_server`` ("HOST:PORT") overrides resolv.conf."""
    import ipaddress

    import dns.asyncresolver
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=dns_server is None)
    if dns_server is not None:
        host, port = split_address(dns_server)
        resolver.nameservers = [host]
        resolver.port = port

    async def resolve(hostname: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(hostname))]  # a literal needs no lookup
        except ValueError:
            pass
        try:
            answer = await resolver.resolve(hostname, "A", lifetime=timeout_s)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise LookupError(f"{hostname}: {exc}") from exc
        return [rr.address for rr in answer]

    return resolve
