"""Generated gRPC stubs for protos/cbir.proto (regenerate with `make protos`)."""
