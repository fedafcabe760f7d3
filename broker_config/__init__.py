"""The broker room: topology, confirmed publishing, validating consumers, RPC, users."""
