"""sapo-swarm swarm layer: everything between nodes (identity, envelopes, admission, sampling, transports)."""
