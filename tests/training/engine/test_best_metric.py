"""Which weights ``checkpoints/best`` holds (issue 13.16): a criterion that moves (``train.best_metric``: auto picks
the over-clustering head's mIoU when the main head is scored many-to-one), the final weights when it never moved,
and export saying which checkpoint it took."""

import logging

import pytest

from tests.training.engine.test_engine import TRAIN, config, records
from tests.training.engine.toy_methods import BinaryToyImages
from training import checkpoint as ck
from training.engine import fit
from training.errors import ConfigError

BINARY = BinaryToyImages(4, size=12, train=False, class_names=["background", "defect"])


def test_on_a_binary_line_best_follows_the_over_clustering_head(tmp_path):
    result = fit(config("toy_binary_line", {"good_epochs": [2]}, epochs=3), tmp_path / "run", train_dataset=TRAIN,
                 eval_dataset=BINARY)
    evals = [r for r in records(tmp_path / "run") if r["kind"] == "eval"]
    assert len({r["miou"] for r in evals}) == 1  # the main head's mIoU never moves
    assert evals[1]["over/miou"] == 1.0 > evals[0]["over/miou"]
    best = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert best.state["step"] == 8  # was 4: the first evaluation of a main-head mIoU that never moves
    assert best.state["metrics"]["best_reason"] == "best_metric"
    assert (result.best_metric, result.best_step, result.best_value) == ("over/miou", 8, 1.0)
    assert ck.describe_checkpoint(best).endswith("(step 8, epoch 2): best over/miou 1.0000 (evaluation 2 of the run)")


def test_a_criterion_that_never_moves_leaves_the_final_weights_as_best(tmp_path, caplog):
    cfg = config("toy_binary_line", {"good_epochs": [2]}, epochs=3, best_metric="miou")
    with caplog.at_level(logging.WARNING):
        result = fit(cfg, tmp_path / "run", train_dataset=TRAIN, eval_dataset=BINARY)
    assert "miou did not move over 3 evaluations" in caplog.text
    assert (result.best_step, result.best_reason) == (12, "final")  # not 4, the first evaluation
    best = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert best.state["step"] == 12
    assert "the final weights; miou did not move over 3 evaluations" in ck.describe_checkpoint(best)


def test_a_unknown_best_metric_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"train.best_metric 'over/miou' .* valid: auto, miou, pixel_accuracy"):
        fit(config(best_metric="over/miou"), tmp_path / "run", train_dataset=TRAIN)


def test_export_says_which_checkpoint_it_took(tmp_path, capsys):
    from export.__main__ import main as export_main

    fit(config("toy_binary_line", {"good_epochs": [2]}, epochs=3), tmp_path / "run", train_dataset=TRAIN,
        eval_dataset=BINARY)
    code = export_main([str(tmp_path / "run"), "--out", str(tmp_path / "model"), "--head", "nope"])  # fails fast
    out = capsys.readouterr().out
    assert code == 2
    assert out.startswith(f"checkpoint: {tmp_path / 'run' / 'checkpoints' / 'best'} (step 8, epoch 2): best "
                          "over/miou 1.0000 (evaluation 2 of the run)\n")
