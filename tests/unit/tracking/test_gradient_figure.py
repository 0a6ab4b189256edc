from ignite.engine import Engine, Events

from thyroid_monai.tracking import GradientDiagnosticsFigure


def fake_epochs(metrics_per_epoch):
    """Runs an engine whose epoch metrics are given, with the figure attached after them."""
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _epoch_metrics(engine):
        engine.state.metrics = dict(metrics_per_epoch[engine.state.epoch - 1])

    figure = GradientDiagnosticsFigure("eval/gradients.png")
    figure.attach(engine)
    engine.run([0], max_epochs=len(metrics_per_epoch))
    return figure


def test_figure_keeps_the_diagnostics_of_every_epoch_and_writes_a_png():
    figure = fake_epochs([
        {"train_grad_cos_seg_cls": -0.2, "train_grad_norm_seg": 1.5, "train_weight_seg": 1.0,
         "train_conflict": 0.75, "train_loss": 3.0, "val_mean_dice": 0.4},
        {"train_grad_cos_seg_cls": 0.1, "train_grad_norm_seg": 0.9, "train_weight_seg": 1.2,
         "train_conflict": 0.25, "train_loss": 2.0},
    ])  # fmt: skip
    assert figure.history == {
        "grad_cos_seg_cls": {1: -0.2, 2: 0.1},
        "grad_norm_seg": {1: 1.5, 2: 0.9},
        "weight_seg": {1: 1.0, 2: 1.2},
        "conflict": {1: 0.75, 2: 0.25},
    }
    assert figure.path.read_bytes().startswith(b"\x89PNG")
    assert not list(figure.path.parent.glob(".*tmp*"))  # written atomically


def test_methods_without_diagnostics_draw_nothing():
    figure = fake_epochs([{"train_loss": 1.0}])
    assert figure.history == {}
    assert not figure.path.exists()


def test_figure_is_redrawn_with_panels_that_were_not_measured(tmp_path):
    figure = GradientDiagnosticsFigure(tmp_path / "g.png")
    figure.record(1, {"train_weight_seg": 1.0, "train_weight_cls": 1.0})
    assert figure.draw() == tmp_path / "g.png"
    assert (tmp_path / "g.png").stat().st_size > 0
