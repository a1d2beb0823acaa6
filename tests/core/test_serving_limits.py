"""The gRPC server limits both servers share (cbir.rpc.serving / cbir.rpc.request_limits)."""

from __future__ import annotations

from cbir.limits import Limits
from cbir.rpc.request_limits import request_byte_limits
from cbir.rpc.serving import receive_limit, return_large_buffers_to_the_os, server_options

LIMITS = Limits(max_image_bytes=1_000_000, max_message_bytes=8_000_000, max_batch=100,
                max_deadline_s=30)


def test_server_options_bound_streams_idle_and_age() -> None:
    options = dict(server_options(LIMITS, receive_bytes=123_456))
    assert options["grpc.max_receive_message_length"] == 123_456
    assert options["grpc.max_send_message_length"] == 8_000_000
    assert 0 < options["grpc.max_concurrent_streams"] <= 1000
    assert options["grpc.max_connection_idle_ms"] > 0
    assert options["grpc.max_connection_age_ms"] > options["grpc.max_connection_idle_ms"]
    # A call with the longest deadline still finishes inside the age grace.
    assert options["grpc.max_connection_age_grace_ms"] > 30_000


def test_each_server_receives_only_what_its_methods_need() -> None:
    limits = request_byte_limits(LIMITS)
    coordinator = receive_limit(["cbir.v1.Coordinator"], limits)
    shard = receive_limit(["cbir.v1.Shard"], limits)
    # SearchBatch: up to max_batch queries, images included, within the message cap.
    assert coordinator == 8_000_000
    assert limits["/cbir.v1.Coordinator/Search"] == 1_000_000 + 64 * 1024  # one image query
    assert shard == 8_000_000  # a batch of packed query vectors
    assert limits["/cbir.v1.Shard/GetVectors"] < 2 * 1024 * 1024  # 100 ids, not 30M
    assert limits["/cbir.v1.Coordinator/Info"] <= 64 * 1024


def test_large_buffers_go_back_to_the_os_on_glibc() -> None:
    assert return_large_buffers_to_the_os() is True  # this machine's Python uses glibc
