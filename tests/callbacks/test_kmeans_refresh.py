import lightning.pytorch as pl
import pytest
import torch
from tiny_runs import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from pixcontrast.callbacks.kmeans import KMeansRefresh


class ToyModule(pl.LightningModule):
    """Smallest module with the KMeansRefresh hooks: two named feature sets, or one plain tensor.

    It records its mode whenever it hands over features (``collect_modes``) and has no clustering-mode hooks.
    """

    def __init__(self, named: bool = True) -> None:
        super().__init__()
        self.named = named
        self.net = torch.nn.Linear(4, 3)
        self.received: list[tuple[int, object]] = []
        self.collect_modes: list[bool] = []

    def cluster_features(self, batch):
        (x,) = batch
        self.collect_modes.append(self.training)
        features = self.net(x)
        return {"a": features, "b": features[:, :2]} if self.named else features

    def cluster_counts(self):
        return {"a": 3, "b": 2} if self.named else 3

    def set_centroids(self, centroids) -> None:
        self.received.append((self.current_epoch, centroids))

    def training_step(self, batch, batch_index):
        (x,) = batch
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x), batch_size=16)


def trainer(tmp_path, callback, max_epochs=2, **kwargs) -> pl.Trainer:
    """``max_epochs`` on the CPU with ``callback`` (or ``kwargs["callbacks"]``), without checkpoints unless asked."""
    kwargs.setdefault("callbacks", [callback])
    return quiet_trainer(tmp_path, max_epochs=max_epochs, **kwargs)


def test_refreshes_every_epoch_and_logs(tmp_path):
    module = ToyModule()
    trainer(tmp_path, KMeansRefresh(metric="euclidean")).fit(module)
    assert [epoch for epoch, _ in module.received] == [0, 1]
    centroids = module.received[-1][1]
    assert centroids["a"].shape == (3, 3) and centroids["b"].shape == (2, 2)
    assert module.collect_modes == [False] * 8  # no mode hooks: eval mode while collecting (4 batches, 2 epochs)
    assert module.training  # mode restored
    metrics = module.trainer.callback_metrics
    assert {"kmeans/inertia_a", "kmeans/inertia_b", "kmeans/points_a", "kmeans/seconds"} <= set(metrics)
    assert metrics["kmeans/points_a"] == 64


class ModeHooksModule(ToyModule):
    """Owns its clustering mode: its hooks put it in train mode and restore the mode they found."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.hook_calls: list[tuple[str, bool]] = []

    def on_cluster_start(self) -> None:
        self.hook_calls.append(("start", self.training))
        self._mode = self.training
        self.train()

    def on_cluster_end(self) -> None:
        self.hook_calls.append(("end", self.training))
        self.train(self._mode)

    def cluster_features(self, batch):
        if self.fail:
            raise RuntimeError("collection failed")
        return super().cluster_features(batch)


class SetMode(pl.Callback):
    """Puts the module in ``training`` mode at each epoch start, before KMeansRefresh (listed after it) runs."""

    def __init__(self, training: bool) -> None:
        self.training = training

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.train(self.training)


@pytest.mark.parametrize("training", [True, False])
def test_modules_with_mode_hooks_set_and_restore_the_mode_themselves(tmp_path, training):
    def fit(module: ModeHooksModule) -> None:
        callbacks = [SetMode(training), KMeansRefresh(metric="euclidean", progress_bar=False)]
        trainer(tmp_path, None, max_epochs=1, callbacks=callbacks).fit(module)

    module = ModeHooksModule()
    fit(module)
    assert module.hook_calls == [("start", training), ("end", True)]  # the callback set no mode of its own
    assert module.collect_modes == [True] * 4 and module.training == training  # the hooks' mode, then restored
    failing = ModeHooksModule(fail=True)
    with pytest.raises(RuntimeError, match="collection failed"):
        fit(failing)
    assert failing.hook_calls == [("start", training), ("end", True)]  # on_cluster_end runs after a failure too


@pytest.mark.parametrize("training", [True, False])
def test_modules_without_mode_hooks_are_collected_in_eval_mode_and_restored(tmp_path, training):
    module = ToyModule()
    callbacks = [SetMode(training), KMeansRefresh(metric="euclidean", progress_bar=False)]
    trainer(tmp_path, None, max_epochs=1, callbacks=callbacks).fit(module)
    assert module.collect_modes == [False] * 4 and module.training == training


def test_modules_with_the_optional_hook_receive_the_cluster_sizes(tmp_path):
    class SizedModule(ToyModule):
        def set_cluster_sizes(self, sizes) -> None:
            self.sizes = sizes

    module = SizedModule()
    trainer(tmp_path, KMeansRefresh(metric="euclidean"), max_epochs=1).fit(module)
    assert set(module.sizes) == {"a", "b"} and module.sizes["a"].shape == (3,) and module.sizes["b"].shape == (2,)
    assert module.sizes["a"].sum().item() == 64 and module.sizes["b"].sum().item() == 64  # every collected point


def test_every_n_epochs_and_bounds(tmp_path):
    module = ToyModule(named=False)
    callback = KMeansRefresh(every_n_epochs=2, max_batches=2, max_points=20, progress_bar=False)
    trainer(tmp_path, callback, max_epochs=3).fit(module)
    assert [epoch for epoch, _ in module.received] == [0, 2]
    assert isinstance(module.received[0][1], torch.Tensor) and module.received[0][1].shape == (3, 3)
    assert module.trainer.callback_metrics["kmeans/points_features"] == 20  # 32 points seen, 20 kept


def test_checkpoint_keeps_progress_not_centroids(tmp_path):
    """The module owns the centroids; the callback's checkpoint state is the last refreshed epoch only."""
    run = trainer(tmp_path / "first", KMeansRefresh(every_n_epochs=5), max_epochs=1, enable_checkpointing=True)
    run.fit(ToyModule())
    checkpoint = run.checkpoint_callback.best_model_path
    states = torch.load(checkpoint, weights_only=False)["callbacks"]
    assert [state for key, state in states.items() if key.startswith("KMeansRefresh")] == [{"refreshed_epoch": 0}]

    resumed = ToyModule()
    run = trainer(tmp_path / "resumed", KMeansRefresh(every_n_epochs=5), max_epochs=2, enable_checkpointing=True)
    run.fit(resumed, ckpt_path=checkpoint)
    assert resumed.received == []  # epoch 1 is no refresh epoch and nothing is handed over: the module kept them


def test_an_epoch_already_refreshed_is_not_refreshed_again(tmp_path):
    """A run resumed inside a refreshed epoch keeps the module's restored centroids."""
    callback = KMeansRefresh()
    callback.load_state_dict({"refreshed_epoch": 0})
    module = ToyModule()
    trainer(tmp_path, callback, max_epochs=2).fit(module)
    assert [epoch for epoch, _ in module.received] == [1]
    assert callback.state_dict() == {"refreshed_epoch": 1}


def test_errors(tmp_path):
    class NoHooks(ToyModule):
        set_centroids = None

    with pytest.raises(RuntimeError, match="set_centroids"):
        trainer(tmp_path, KMeansRefresh()).fit(NoHooks())

    class WrongKeys(ToyModule):
        def cluster_counts(self):
            return {"a": 3, "c": 2}

    with pytest.raises(ValueError, match="'c'"):
        trainer(tmp_path, KMeansRefresh()).fit(WrongKeys())
    with pytest.raises(ValueError, match="max_points"):
        KMeansRefresh(max_points=0)
    with pytest.raises(ValueError, match="metric"):
        KMeansRefresh(metric="l1")
