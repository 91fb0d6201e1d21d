"""Training objectives beyond next-token cross entropy (preference optimisation: DPO, BCO-pair, MPO)."""
