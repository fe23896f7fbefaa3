"""Generated protobuf and gRPC code for proto/*.proto (built by `make proto`, never edited)."""
