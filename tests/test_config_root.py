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
