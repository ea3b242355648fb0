"""The training loop and what it needs: policy, EMAs, rewards per chunk, fault guards, checkpoints."""


class RunHalted(RuntimeError):
    """The run stopped itself (:mod:`dgpo.training.guards`): too many skipped steps or failed reward
    epochs in a row. Defined here, free of torch, so that the CLI can catch it cheaply."""


class PeerLost(RuntimeError):
    """Another process of a multi-process run died or stopped answering (a collective failed or timed out)."""
