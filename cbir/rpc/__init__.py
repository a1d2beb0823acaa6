"""gRPC plumbing shared by the shard server and the coordinator."""
