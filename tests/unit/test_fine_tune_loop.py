"""The fine-tune's epoch loop: the embedding rows it trains, the best epoch it keeps."""

import numpy as np
import pytest


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_training_the_used_embedding_rows_gives_the_weights_of_training_the_whole_table(tiny_bert, monkeypatch, pooling):
    """Rows of the vocabulary no training text uses only decay: the same final weights, every one of them, as
    AdamW over the whole embedding table."""
    import torch

    from pipelines.config import TrainSettings
    from pipelines.tasks.log_anomaly import tune_anomaly_threshold
    from pipelines.training import fine_tune as module

    texts = [f"request {w} served ok in <NUM> ms" for w in "abcdefgh"] * 3 + [f"fatal disk failure on node {w}" for w in "abcd"]
    y = np.array([[0.0]] * 24 + [[1.0]] * 4, dtype=np.float32)
    params = TrainSettings(epochs=2, batch_size=8, learning_rate=1e-3, weight_decay=0.1, seed=3, device="cpu", pooling=pooling)

    def weights():
        fit = module.fine_tune(texts, y, None, None, checkpoint=str(tiny_bert), params=params, tune=tune_anomaly_threshold)
        return {k: v.clone() for k, v in fit.model.state_dict().items()}

    used = weights()
    monkeypatch.setattr(module.UsedRows, "applies", staticmethod(lambda model: False))
    whole = weights()
    assert used.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(used[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_run_keeps_its_best_epoch_and_copies_no_weights_when_the_last_is_best():
    import torch

    from pipelines.training.loop import Validation, run_epochs

    scores = iter([0.5, 0.9, 0.7, 0.6])
    model = torch.nn.Linear(2, 1)
    done = []

    def train_epoch():
        with torch.no_grad():
            model.weight.fill_(len(done) + 1.0)  # weights after epoch E: all E
        done.append(1)
        return 0.1

    run = run_epochs(model, epochs=4, patience=2, train_epoch=train_epoch, validate=lambda: Validation({"f1": next(scores)}),
                     rank=lambda m: m["f1"])
    assert run.best.epoch == 2 and len(run.history) == 4
    assert torch.all(model.weight == 2.0)  # the best epoch's weights, restored

    rising = iter([0.1, 0.2])
    done.clear()
    run = run_epochs(model, epochs=2, patience=2, train_epoch=train_epoch, validate=lambda: Validation({"f1": next(rising)}),
                     rank=lambda m: m["f1"])
    assert run.best.epoch == 2 and torch.all(model.weight == 2.0) and run.best.state_dict == {}
