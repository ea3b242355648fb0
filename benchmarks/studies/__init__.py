"""Studies of the toy world: RL headroom, gradient signal-to-noise, ODE vs SDE evals."""
