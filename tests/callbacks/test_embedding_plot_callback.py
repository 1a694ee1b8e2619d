from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from prismrl.callbacks import EmbeddingPlotCallback
from prismrl.callbacks.embedding_plot import (
    collect_fixed_subset,
    draw_embedding_figure,
    project_2d,
    tsne_perplexity,
)
from prismrl.data.batches import ImageTextBatch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ["pca", "umap"]}, r"methods.*\['umap'\]"),
        ({"methods": []}, "methods must be a non-empty list"),
        ({"methods": "pca"}, "methods must be a non-empty list"),
        ({"every_n_epochs": 0}, "every_n_epochs: expected an int >= 1, received 0"),
        ({"num_samples": 1}, "num_samples: expected an int >= 2, received 1"),
        ({"filename": "a/b"}, "filename"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingPlotCallback(**kwargs)


def test_tsne_perplexity_by_hand():
    assert tsne_perplexity(2) == 1.0  # (2 - 1) / 3 < 1 -> 1, still < 2 points
    assert tsne_perplexity(31) == 10.0
    assert tsne_perplexity(512) == 30.0


def test_pca_matches_naive_svd_up_to_sign():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1])  # [40, 6]
    centered = points - points.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    reference = centered @ vt[:2].T  # [40, 2]
    got = project_2d(points, "pca")
    for k in range(2):
        sign = np.sign(got[:, k] @ reference[:, k])
        np.testing.assert_allclose(got[:, k] * sign, reference[:, k], rtol=1e-4, atol=1e-4)
    one_dim = project_2d(points[:, :1], "pca")  # D = 1 -> second coordinate is zero
    assert one_dim.shape == (40, 2) and np.all(one_dim[:, 1] == 0)


def test_tsne_is_seeded_and_separates_clusters():
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.1, (20, 8)), rng.normal(5, 0.1, (20, 8))])  # [40, 8]
    a, b = project_2d(points, "tsne", seed=3), project_2d(points, "tsne", seed=3)
    np.testing.assert_array_equal(a, b)
    gap = np.linalg.norm(a[:20].mean(0) - a[20:].mean(0))
    spread = max(a[:20].std(0).max(), a[20:].std(0).max())
    assert gap > 3 * spread
    with pytest.raises(ValueError, match="method must be one of"):
        project_2d(points, "umap")
    with pytest.raises(ValueError, match="N >= 2"):
        project_2d(points[:1], "pca")


def test_collect_fixed_subset_takes_the_first_samples_in_order():
    batches = [
        ImageTextBatch(torch.full((5, 3, 2, 2), float(b)), [f"c{b}{i}" for i in range(5)], torch.arange(5) + 10 * b)
        for b in range(3)
    ]
    subset = collect_fixed_subset(batches, 7)
    assert len(subset) == 7 and subset.captions == ["c00", "c01", "c02", "c03", "c04", "c10", "c11"]
    assert subset.labels.tolist() == [0, 1, 2, 3, 4, 10, 11]
    assert subset.pixel_values[:, 0, 0, 0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    unlabeled = collect_fixed_subset([ImageTextBatch(torch.zeros(3, 3, 2, 2), ["a", "b", "c"])], 10)
    assert unlabeled.labels.tolist() == [-1, -1, -1]
    with pytest.raises(TypeError, match="ImageTextBatch, received dict"):
        collect_fixed_subset([{"pixel_values": torch.zeros(2)}], 4)


def test_figure_has_one_panel_per_method_and_named_legend():
    labels = np.array([0, 1, 2, -1])
    xy = np.arange(16, dtype=np.float32).reshape(8, 2)  # [2N, 2]
    fig = draw_embedding_figure({"pca": xy, "tsne": xy}, labels, ["zero", "one", "two"], draw_pairs=True)
    assert [ax.get_title() for ax in fig.axes] == ["PCA", "TSNE"]
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert legend == ["image", "text", "zero", "one", "two", "no class"]
    assert len(fig.axes[0].lines) == 4  # one pair line per image/caption
    with pytest.raises(ValueError, match=r"must be \[8, 2\]"):
        draw_embedding_figure({"pca": xy[:6]}, labels)


def test_trainer_run_writes_logs_and_caches_subset(tmp_path, digits, aligner, make_trainer, read_tb_images):
    every = EmbeddingPlotCallback(num_samples=40, methods=["pca", "tsne"], filename="emb", draw_pairs=True)
    second = EmbeddingPlotCallback(every_n_epochs=2, num_samples=24, methods=["pca"], filename="pca")
    tb = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(tmp_path, max_epochs=2, logger=[tb, CSVLogger(tmp_path, name="csv")],
                           callbacks=[every, second])
    trainer.fit(aligner, datamodule=digits)

    plots = tmp_path / "tb" / "version_0" / "plots"
    assert every.written == [plots / "emb_epoch000.png", plots / "emb_epoch001.png"]  # no sanity-check plot
    assert second.written == [plots / "pca_epoch001.png"]
    for path in every.written + second.written:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200
    with Image.open(every.written[0]) as two_panels, Image.open(second.written[0]) as one_panel:
        assert two_panels.size[0] > 1.5 * one_panel.size[0]
    tb.experiment.flush()
    images = read_tb_images(tb.log_dir)
    assert images["plots/emb"] == [trainer.global_step // 2, trainer.global_step]
    assert images["plots/pca"] == [trainer.global_step]
    # the cached subset is the first 40 validation samples
    assert every._subset is not None and len(every._subset) == 40
    assert every._subset.labels.tolist() == [p[2] for p in digits.val_pairs[:40]]
    assert every._subset.captions == [p[1] for p in digits.val_pairs[:40]]


def test_plotting_keeps_rng_and_module_modes(tmp_path, digits, aligner, make_trainer):
    callback = EmbeddingPlotCallback(num_samples=16, methods=["pca"])
    trainer = make_trainer(tmp_path, max_epochs=1, logger=False, callbacks=[callback])
    trainer.fit(aligner, datamodule=digits)
    aligner.train()
    aligner.image_proj.eval()  # a frozen submodule stays in eval mode
    rng_before = torch.get_rng_state()
    callback.on_validation_epoch_end(trainer, aligner)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert aligner.training and not aligner.image_proj.training and aligner.text_proj.training
    assert callback.written[-1] == tmp_path / "plots" / "embeddings_epoch001.png"  # no logger: default_root_dir


def test_wandb_offline_receives_the_image(tmp_path, digits, aligner, make_trainer, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    callback = EmbeddingPlotCallback(num_samples=16, methods=["pca"])
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="prismrl-test")
    trainer = make_trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[callback], num_sanity_val_steps=0)
    try:
        trainer.fit(aligner, datamodule=digits)
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    media = list((tmp_path / "wandb").rglob("media/images/plots/embeddings*.png"))
    assert len(media) == 1, (run_dir, media)
    assert callback.written == [tmp_path / "plots" / "embeddings_epoch000.png"]


def test_module_without_embed_methods_raises(tmp_path, digits, make_trainer):
    import lightning.pytorch as pl

    class NoEmbed(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def validation_step(self, batch, batch_idx):
            return None

    trainer = make_trainer(tmp_path, logger=False, callbacks=[EmbeddingPlotCallback(methods=["pca"])])
    with pytest.raises(TypeError, match="NoEmbed must define embed_images"):
        trainer.validate(NoEmbed(), datamodule=digits, verbose=False)
