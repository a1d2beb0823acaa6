from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbir.errors import InvalidArgument
from coordinator.topology import (
    DnsTopology,
    HostResolver,
    StaticTopology,
    dnspython_resolver,
    load_topology_file,
)
from tests.coordinator.harness import TinyDnsServer


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(data))
    return path


def test_topology_file_parses(tmp_path: Path) -> None:
    path = write(tmp_path, {"shards": {"1": ["10.0.0.3:7001"], "0": ["h:1", "h:2"]}})
    topo = StaticTopology.from_file(path)
    assert topo.num_shards == 2
    assert asyncio.run(topo.resolve({})) == {0: ("h:1", "h:2"), 1: ("10.0.0.3:7001",)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"shards": {"0": ["h:1"], "2": ["h:2"]}}, "numbered 0..N-1"),
        ({"shards": {}}, "numbered 0..N-1"),
        ({"shards": {"0": []}}, "no replica address"),
        ({"shards": {"0": ["h:1", "h:1"]}}, "twice"),
        ({"shards": {"0": ["no-port"]}}, "host:port"),
        ({"shards": {"0": ["h:99999"]}}, "host:port"),
        ({"shards": {"x": ["h:1"]}}, "shards.x"),
        ({"shards": {"0": ["h:1"]}, "extra": 1}, "extra"),
    ],
)
def test_bad_topology_files_are_refused_clearly(tmp_path: Path, data: object,
                                                message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_topology_file(write(tmp_path, data))


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not found"):
        load_topology_file(tmp_path / "nope.json")
    (tmp_path / "t.json").write_text("{")
    with pytest.raises(InvalidArgument, match="not JSON"):
        load_topology_file(tmp_path / "t.json")


class FakeResolver:
    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)  # type: ignore[call-overload]


def test_dns_topology_resolves_every_shard_and_follows_changes() -> None:
    resolver = FakeResolver({
        "shard-0.svc": ["10.0.0.2", "10.0.0.1"],
        "shard-1.svc": ["10.0.1.1"],
    })
    topo = DnsTopology("shard-{shard}.svc:50051", 2, resolver)
    first = asyncio.run(topo.resolve({}))
    assert first == {0: ("10.0.0.1:50051", "10.0.0.2:50051"), 1: ("10.0.1.1:50051",)}
    resolver.answers["shard-1.svc"] = ["10.0.1.1", "10.0.1.2"]  # kubectl scale
    resolver.answers["shard-0.svc"] = LookupError("NXDOMAIN")  # every replica gone
    second = asyncio.run(topo.resolve(first))
    assert second == {0: (), 1: ("10.0.1.1:50051", "10.0.1.2:50051")}


def test_a_failed_lookup_keeps_the_previous_replicas() -> None:
    resolver = FakeResolver({"s0": TimeoutError("dns timeout")})
    topo = DnsTopology("s{shard}:1", 1, resolver)
    assert asyncio.run(topo.resolve({0: ("10.0.0.9:1",)})) == {0: ("10.0.0.9:1",)}


@pytest.mark.parametrize("template", ["no-field:1", "s{shard}", "s{other}:1"])
def test_bad_dns_templates(template: str) -> None:
    with pytest.raises(InvalidArgument):
        DnsTopology(template, 2, FakeResolver({}))


@pytest.fixture
def dns_server() -> Iterator[TinyDnsServer]:
    server = TinyDnsServer({"shard-0.cbir.test": ["127.0.0.2", "127.0.0.3"],
                            "shard-1.cbir.test": ["127.0.0.4"]})
    yield server
    server.close()


def test_dnspython_resolver_asks_the_given_server(dns_server: TinyDnsServer) -> None:
    resolve = dnspython_resolver(f"127.0.0.1:{dns_server.port}")
    topo = DnsTopology("shard-{shard}.cbir.test:7000", 3, resolve)
    assert asyncio.run(topo.resolve({})) == {
        0: ("127.0.0.2:7000", "127.0.0.3:7000"),
        1: ("127.0.0.4:7000",),
        2: (),  # NXDOMAIN: no replica
    }
    assert asyncio.run(_call(resolve, "127.0.0.9")) == ["127.0.0.9"]  # literals skip DNS


async def _call(resolve: HostResolver, host: str) -> list[str]:
    return await resolve(host)
