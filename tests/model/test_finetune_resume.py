"""An interrupted fine-tune resumes from its checkpoint and ends with the model of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tests.support import training

from transfer_rec.recommender.transfer import TransferRecommender

REPO = Path(__file__).resolve().parents[2]
# patience above the epoch count: all epochs run, so an interruption always has work left to skip
CONFIG = dict(hidden=16, epochs_pretrain=2, epochs_finetune=8, patience=100, batch_size=16, source_replay=0.3, seed=5)
N_ITEMS = 40


def rows(n_users: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, N_ITEMS)) < 0.2).astype(np.float32))


def data() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    candidates = np.arange(N_ITEMS) < 30
    return (rows(40, 2).multiply(candidates).tocsr(), rows(40, 3).multiply(candidates).tocsr(), candidates)


def pretrained(**overrides) -> TransferRecommender:
    model = TransferRecommender(N_ITEMS, training(**{**CONFIG, **overrides}))
    model.pretrain(rows(80, 1))
    return model


class Killed(Exception):
    pass


def kill_at(epoch: int):
    def log(entry: dict) -> None:
        if entry["stage"] == "finetune" and entry["epoch"] == epoch:
            raise Killed

    return log


def finetune_epochs(history: list[dict]) -> list[int]:
    return [e["epoch"] for e in history if e["stage"] == "finetune"]


# past softmax_items_max items the loss is sampled and Adam runs fused (its own kernel): it must resume the same
SAMPLED = dict(softmax_items_max=N_ITEMS // 2, sampled_items=10)


@pytest.mark.parametrize(
    "strategy, encoders, extra",
    [("full", 1, {}), ("freeze_encoder", 1, {}), ("full", 2, {}), ("full", 1, SAMPLED)],
    ids=["full", "freeze_encoder", "two-encoders", "sampled-fused"],
)
def test_resumed_finetune_ends_like_an_uninterrupted_one(tmp_path, strategy, encoders, extra):
    train, valid, candidates = data()
    reference = pretrained(strategy=strategy, encoders=encoders, **extra)
    expected = reference.finetune(train, valid, candidates)

    checkpoint = tmp_path / "target.finetune.ckpt"
    with pytest.raises(Killed):
        pretrained(strategy=strategy, encoders=encoders, **extra).finetune(
            train, valid, candidates, log=kill_at(3), checkpoint=checkpoint, checkpoint_seconds=0
        )
    assert checkpoint.exists()

    rerun: list[dict] = []
    resumed = pretrained(strategy=strategy, encoders=encoders, **extra)
    history = resumed.finetune(train, valid, candidates, log=rerun.append, checkpoint=checkpoint)
    # epoch 3 was interrupted before its checkpoint: the rerun starts there and does not redo the item-item choice
    assert finetune_epochs(rerun) == list(range(3, 9))
    assert not [e for e in rerun if e["stage"] == "item_item"]
    assert finetune_epochs(history) == finetune_epochs(expected) == list(range(1, 9))
    np.testing.assert_allclose([e["valid_ndcg"] for e in history], [e["valid_ndcg"] for e in expected], atol=1e-9)
    np.testing.assert_allclose(resumed.score(train), reference.score(train), atol=1e-6)
    for name, tensor in reference.encoder.state_dict().items():
        torch.testing.assert_close(resumed.encoder.state_dict()[name], tensor, atol=1e-6, rtol=0)
    assert resumed.beta == reference.beta and resumed.item_params == reference.item_params
    assert not checkpoint.exists()  # removed once the fine-tune finished


def test_progress_is_written_at_most_every_checkpoint_seconds_and_still_resumes_to_the_same_model(tmp_path):
    train, valid, candidates = data()
    reference = pretrained()
    reference.finetune(train, valid, candidates)
    checkpoint = tmp_path / "target.finetune.ckpt"
    with pytest.raises(Killed):  # epochs of milliseconds: none written before the kill, only the item-item choice
        pretrained().finetune(train, valid, candidates, log=kill_at(3), checkpoint=checkpoint, checkpoint_seconds=3600)
    rerun: list[dict] = []
    resumed = pretrained()
    resumed.finetune(train, valid, candidates, log=rerun.append, checkpoint=checkpoint)
    assert finetune_epochs(rerun) == list(range(1, 9)) and not [e for e in rerun if e["stage"] == "item_item"]
    np.testing.assert_allclose(resumed.score(train), reference.score(train), atol=1e-6)


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    train, valid, candidates = data()
    checkpoint = tmp_path / "target.finetune.ckpt"
    with pytest.raises(Killed):
        pretrained().finetune(train, valid, candidates, log=kill_at(3), checkpoint=checkpoint)
    rerun: list[dict] = []
    other_seed = pretrained(seed=6)  # other starting weights and settings: starting over is the only right thing
    other_seed.finetune(train, valid, candidates, log=rerun.append, checkpoint=checkpoint)
    assert finetune_epochs(rerun) == list(range(1, 9))


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads({threads})
from test_finetune_resume import data, pretrained
train, valid, candidates = data()

def slow(entry):
    print(entry["stage"], entry["epoch"], flush=True)
    time.sleep(0.3)

pretrained().finetune(train, valid, candidates, log=slow, checkpoint={checkpoint!r}, checkpoint_seconds=0)
print("finished", flush=True)
"""


def test_a_process_killed_mid_finetune_resumes_to_the_same_model(tmp_path):
    train, valid, candidates = data()
    reference = pretrained()
    reference.finetune(train, valid, candidates)

    checkpoint = tmp_path / "target.finetune.ckpt"
    code = CHILD.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads(), checkpoint=str(checkpoint))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        for line in child.stdout:
            if line.split() == ["finetune", "4"] or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)  # no clean-up, no flush: as when a worker is lost
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert checkpoint.exists()

    rerun: list[dict] = []
    resumed = pretrained()
    resumed.finetune(train, valid, candidates, log=rerun.append, checkpoint=checkpoint)
    assert 1 < finetune_epochs(rerun)[0] <= 5, finetune_epochs(rerun)
    np.testing.assert_allclose(resumed.score(train), reference.score(train), atol=1e-6)


def test_a_resumed_finetune_keeps_the_sources_the_choice_dropped(tmp_path):
    """Two sources, one of them noise on the target's items: the uninterrupted fine-tune drops it; a run killed
    after an epoch and resumed must not bring it back (its weight is a param, and the later parts learn from it)."""
    train, valid, candidates = data()
    rng = np.random.default_rng(7)
    # the target's users again, and users with random items
    good = sp.vstack([train + valid, rows(40, 4).multiply(candidates)]).tocsr()
    noise = sp.csr_matrix((rng.random((80, N_ITEMS)) < 0.3).astype(np.float32))

    def model() -> TransferRecommender:
        fitted = TransferRecommender(N_ITEMS, training(**{**CONFIG, "item_grid": []}))
        fitted.pretrain({"good": good, "noise": noise})
        return fitted

    reference = model()
    reference.finetune(train, valid, candidates)
    assert reference.source_weights == {"good": 1.0, "noise": 0.0}, "the planted data must make the choice drop one"
    checkpoint = tmp_path / "target.finetune.ckpt"
    with pytest.raises(Killed):
        model().finetune(train, valid, candidates, log=kill_at(2), checkpoint=checkpoint)
    resumed = model()
    resumed.finetune(train, valid, candidates, checkpoint=checkpoint)
    assert resumed.source_weights == reference.source_weights
    np.testing.assert_allclose(resumed.score(train), reference.score(train), atol=1e-6)
