"""The multi-process guards that need no second process: which resumes a changed process count allows,
and how a failed collective or a process group that never formed becomes one PeerLost line."""

import pytest
import torch.distributed as dist

from dgpo.config import load_config
from dgpo.errors import InputError
from dgpo.training import PeerLost
from dgpo.training.distributed import check_resume_processes, peers_watched


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_the_same_count_or_an_old_checkpoint_resumes_freely():
    check_resume_processes(2, 2, _cfg(), allowed=False)
    check_resume_processes(None, 4, _cfg(), allowed=False)  # written before the count was recorded


def test_another_count_needs_the_flag_and_is_refused_where_samples_depend_on_it():
    with pytest.raises(InputError, match=r"written by 2 process\(es\) and this run has 1.*--change-processes"):
        check_resume_processes(2, 1, _cfg(), allowed=False)
    check_resume_processes(2, 1, _cfg(), allowed=True)
    check_resume_processes(2, 1, _cfg("train.algorithm=nft"), allowed=True)  # one step per epoch: no shuffle
    for overrides in (["train.algorithm=flow_grpo"], ["train.algorithm=nft", "train.steps_per_epoch=2"],
                      ["train.algorithm=awm", "train.steps_per_epoch=2"]):
        with pytest.raises(InputError, match=r"its samples would change too: resume with 2 process\(es\)"):
            check_resume_processes(2, 1, _cfg(*overrides), allowed=True)


def test_a_process_group_that_never_formed_is_one_peer_lost_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(PeerLost, match=r"^process 1 of 2: a collective failed.*wait timeout.*--resume$"):
        with peers_watched():
            raise dist.DistStoreError("wait timeout after 8000ms, keys: /default_pg/0//cpu//0/0")


def test_other_errors_pass_through(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(dist.DistStoreError):  # one process: nothing to blame on a peer
        with peers_watched():
            raise dist.DistStoreError("wait timeout")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="^a bug$"):  # not a collective's failure
        with peers_watched():
            raise RuntimeError("a bug")
    with pytest.raises(ValueError):
        with peers_watched():
            raise ValueError("bad input")
