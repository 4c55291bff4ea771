"""Generated protobuf and gRPC stubs of the quota API (see protos/)."""
