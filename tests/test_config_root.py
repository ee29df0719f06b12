"""The data root is resolved once, where the config is loaded, for every data path of the config."""

from __future__ import annotations

from geossl.config import load_config


def test_data_root_is_resolved_once_for_every_path(tmp_path, monkeypatch):
    monkeypatch.delenv("GEOSSL_DATA", raising=False)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.paths=[$GEOSSL_DATA/a, /abs/b, rel/c]",
                             "data.stats=${GEOSSL_DATA}/s.json", "eval.knn_data=$GEOSSL_DATA/knn"])
    assert cfg.data.paths == [f"{tmp_path}/a", "/abs/b", "rel/c"]
    assert cfg.data.stats == f"{tmp_path}/s.json" and cfg.eval.knn_data == f"{tmp_path}/knn"
    monkeypatch.setenv("GEOSSL_DATA", "elsewhere")  # the environment wins over data.root, as documented
    cfg = load_config(None, [f"data.root={tmp_path}", "data.paths=[$GEOSSL_DATA/a]"])
    assert cfg.data.paths == ["elsewhere/a"]


def test_relative_geossl_data_trains(tmp_path, monkeypatch):
    """GEOSSL_DATA may be relative to the working folder (as a user types it)."""
    from dino_helpers import TINY, make_patch_folder

    from geossl.dino.train import pretrain

    _, stats = make_patch_folder(tmp_path / "data" / "mine", n_per_class=8)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOSSL_DATA", "data")
    cfg = load_config(None, [*TINY, "data.paths=[$GEOSSL_DATA/mine]", f"data.stats={stats}", "optim.epochs=1",
                             "eval.knn_data=$GEOSSL_DATA/mine"])
    assert cfg.data.paths == ["data/mine"]
    summary = pretrain(cfg, "run")
    assert summary["status"] == "finished" and summary["knn_top1"] is not None
