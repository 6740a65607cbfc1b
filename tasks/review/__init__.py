"""Review: people curate captured traffic into training data (pending records, decisions, their commits)."""
