"""ubique.runtime: loads kernels behind the one kernel ABI and runs them."""
