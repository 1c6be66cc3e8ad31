"""``python -m benchmarks music --tables memory|redis``: the table pipeline equals the pandas one
on real data, the benchmark's redis-server is stopped afterwards, and a missing redis-server is a
clear command-line error. Skipped when the repository's data/ is absent (and the Redis part without
the redis-server binary)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import cli, feature_tables, music
from benchmarks.data import data_available
from benchmarks.feature_tables import serve_tables
from willow.tables import MemoryTable, RedisTable

pytestmark = pytest.mark.data

needs_music = pytest.mark.skipif(not data_available(*music.FILES), reason="the real data (data/) is absent")


# make_table_pipeline's closure variable -> the table it serves
TABLE_VARIABLES = {
    "user_table": "user",
    "item_table": "item",
    "genre_table": "genres",
    "year_table": "year",
    "item_tag_table": "item_tags",
    "user_tag_table": "user_tags",
    "user_genre_table": "user_genres",
    "activity_table": "activity",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WILLOW_BENCH_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        return music.prepare("smoke")


@needs_music
@pytest.mark.parametrize("mode", ["memory", "redis"])
def test_table_modes_serve_the_pandas_pipelines_features(prepared, mode):
    if mode == "redis" and feature_tables.check_mode("redis"):
        pytest.skip(feature_tables.check_mode("redis"))
    model, rows = prepared.model, prepared.test_rows
    expected = prepared.original()(model, rows)
    with serve_tables(prepared, mode) as served:
        info = served.details["feature_tables"]
        assert info["mode"] == mode and info["same_output_as_pandas"]
        kind = MemoryTable if mode == "memory" else RedisTable
        table_fn = served.original()
        closure = dict(zip(table_fn.__code__.co_freevars, (c.cell_contents for c in table_fn.__closure__)))
        tables = {name: value for name, value in closure.items() if name.endswith("_table")}
        assert set(tables) == set(TABLE_VARIABLES) and all(isinstance(t, kind) for t in tables.values())
        np.testing.assert_array_equal(table_fn(model, rows), expected)
        np.testing.assert_array_equal(table_fn(model, rows.iloc[:1]), expected[:1])
        # 0 rows: the model refuses them, the tables answer like reindex.
        for variable, name in TABLE_VARIABLES.items():
            keys = rows["movieId"][:0]
            frame = prepared.feature_frames[name].astype(float)
            pd.testing.assert_frame_equal(tables[variable].lookup(keys), frame.reindex(keys))
        port = int(info["where"].rsplit(":", 1)[1]) if mode == "redis" else None
    assert prepared.make_pipeline().__wrapped__(model, rows).tolist() == expected.tolist()
    if port is not None:  # the benchmark's server is gone
        import socket

        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass


@needs_music
def test_missing_redis_server_is_a_clear_command_line_error(monkeypatch, capsys):
    monkeypatch.setattr(feature_tables, "redis_server_binary", lambda: None)
    with pytest.raises(SystemExit):
        cli.main(["music", "--tables", "redis", "--scale", "smoke"])
    assert "apt-get install redis-server" in capsys.readouterr().err


@needs_music
def test_tables_option_is_refused_for_workloads_without_tables(capsys):
    with pytest.raises(SystemExit):
        cli.main(["toxic", "--tables", "memory", "--scale", "smoke"])
    assert "applies to music only" in capsys.readouterr().err
