from ignite.engine import Engine, Events

from thyroid_monai.engine import EpochSummary


def test_epoch_line_shows_the_loss_and_the_validation_scores(capsys):
    evaluator = Engine(lambda engine, batch: None)
    trainer = Engine(lambda engine, batch: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):  # attached before the summary, as ValidationHandler is in train.yaml
        engine.state.metrics["train_loss"] = 1.7081
        evaluator.state.metrics = {"val_mean_dice": 0.7472, "val_macro_f1": 0.0571}

    EpochSummary(evaluator).attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:8] == [
        "epoch", "2/2", "loss", "1.708", "Dice", "0.747", "macro-F1", "0.057",
    ]  # fmt: skip
    assert "QWK" not in lines[1]  # a score the evaluator does not have is left out
