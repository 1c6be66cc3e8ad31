"""willow.tables: MemoryTable and RedisTable against ``frame.astype(float).reindex(keys)``, Redis
failures (a server stopped mid-run, a server that stops answering), pickling, and a cascade
calibrated over a RedisTable-backed pipeline.

The Redis tests run against real ``redis-server`` processes started on free ports (CI installs
the Debian package); they are skipped, with the reason, only where the binary is absent.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import table_pipelines
from equivalence import assert_cascade_equivalent, routed_rows
from lightgbm import LGBMClassifier
from sklearn.linear_model import LogisticRegression

import willow
from willow.errors import TableError, TableFallbackWarning, TableUnavailableError, WillowError
from willow.tables import LocalRedisServer, MemoryTable, RedisTable, redis_server_binary

needs_redis = pytest.mark.skipif(
    redis_server_binary() is None, reason="redis-server is not installed (apt-get install redis-server)"
)


def make_frame(n_keys: int = 50, seed: int = 0) -> pd.DataFrame:
    """A feature table with integer, float (with NaN) and boolean columns, keyed by user id."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "count": rng.integers(0, 100, n_keys),
            "mean": rng.normal(size=n_keys),
            "flag": rng.random(n_keys) > 0.5,
        },
        index=pd.Index(np.arange(n_keys) * 3 + 1, name="userId"),
    )
    frame.loc[frame.index[::7], "mean"] = np.nan
    return frame


KEY_CASES = {
    "list": lambda f: [f.index[3], f.index[0], 9999, f.index[3]],
    "ndarray": lambda f: np.asarray([f.index[5], -1, f.index[1]]),
    "int32_array": lambda f: np.asarray([f.index[5], -1], dtype=np.int32),
    "float_series": lambda f: pd.Series([f.index[5], 0.5], name="f"),
    "series": lambda f: pd.Series([f.index[2], f.index[2], 2], index=[10, 11, 12], name="userId"),
    "series_unnamed": lambda f: pd.Series([f.index[4], 5]),
    "index": lambda f: pd.Index([f.index[1], f.index[0]], name="other"),
    "all_present": lambda f: list(f.index[::-1]),
    "own_index": lambda f: f.index,
    "empty_list": lambda f: [],
    "empty_array": lambda f: np.array([], dtype=np.int64),
    "empty_series": lambda f: pd.Series([], dtype=np.int64, name="userId"),
    "one_key": lambda f: [f.index[0]],
    "one_unseen": lambda f: np.array([123456]),
    "all_unseen": lambda f: [2, 3, 5],
    "float_keys": lambda f: [float(f.index[1]), 2.5],
    "mixed_kinds": lambda f: ["x", f.index[1]],
    "nan_key": lambda f: [np.nan, float(f.index[0])],
    "many_duplicates": lambda f: np.repeat(f.index[:5].to_numpy(), 40),
}


def expected(frame: pd.DataFrame, keys) -> pd.DataFrame:
    return frame.astype("float64").reindex(keys)


# --------------------------------------------------------------------------- MemoryTable


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_memory_table_equals_reindex(case):
    frame = make_frame()
    keys = KEY_CASES[case](frame)
    result = MemoryTable(frame).lookup(keys)
    pd.testing.assert_frame_equal(result, expected(frame, keys))
    assert (result.dtypes == "float64").all()


def test_float64_rule_holds_where_reindex_dtypes_vary():
    """reindex keeps int64 when every key is found and upcasts when one is missing; tables always
    return float64, so a pipeline's feature dtypes do not depend on the batch."""
    frame = make_frame()
    assert frame.reindex(frame.index[:2])["count"].dtype == np.int64
    assert frame.reindex([9999])["count"].dtype == np.float64
    table = MemoryTable(frame)
    for keys in (frame.index[:2], [9999], []):
        assert table.lookup(keys)["count"].dtype == np.float64


def test_memory_table_string_keys_and_empty_table():
    frame = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["u1", "u2"], name="user"))
    table = MemoryTable(frame)
    for keys in (["u2", "zz", "u1"], pd.Series(["u1"]), [], [1, "u1"]):
        pd.testing.assert_frame_equal(table.lookup(keys), expected(frame, keys))
    empty = MemoryTable(frame.iloc[:0])
    pd.testing.assert_frame_equal(empty.lookup(["u1"]), expected(frame.iloc[:0], ["u1"]))


def test_memory_table_result_is_not_a_view_of_the_table():
    frame = make_frame()
    table = MemoryTable(frame)
    out = table.lookup(frame.index)
    out.iloc[0, 0] = -1.0
    assert table.lookup(frame.index[:1]).iloc[0, 0] == frame.iloc[0, 0]


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"a": [1.0, 2.0]}, index=[1, 1]), "more than once"),
        (pd.DataFrame({"a": ["x", "y"]}, index=[1, 2]), "not numeric"),
        (pd.DataFrame({"a": [1.0]}, index=pd.MultiIndex.from_tuples([(1, 2)])), "MultiIndex"),
    ],
)
def test_bad_frames_are_refused(frame, message):
    with pytest.raises(TableError, match=message):
        MemoryTable(frame)


def test_bad_keys_are_refused():
    table = MemoryTable(make_frame())
    with pytest.raises(TypeError, match="one column"):
        table.lookup(pd.DataFrame({"k": [1]}))
    with pytest.raises(TypeError, match="one-dimensional"):
        table.lookup(np.ones((2, 2)))


def test_willow_imports_without_redis_py():
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import pandas as pd, willow\n"
        "t = willow.tables.MemoryTable(pd.DataFrame({'a': [1.0]}, index=[7]))\n"
        "assert t.lookup([7]).iloc[0, 0] == 1.0\n"
        "r = willow.tables.RedisTable(prefix='x')\n"
        "try:\n    r.lookup([7])\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'willow[tables]'" in out.stdout


# --------------------------------------------------------------------------- RedisTable


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session (free port, temp dir, no persistence)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'willow[tables]')")
    with LocalRedisServer() as server:
        yield server


@pytest.fixture
def own_server():
    """A server this test may stop or pause."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'willow[tables]')")
    server = LocalRedisServer().start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@needs_redis
@pytest.mark.parametrize("batch_size", [1, 3, 2000])
def test_redis_table_equals_memory_table_and_reindex(redis_server, batch_size):
    frame = make_frame()
    table = RedisTable.from_frame(frame, redis_server.url, prefix=f"eq{batch_size}", batch_size=batch_size)
    memory = MemoryTable(frame)
    for case, make_keys in KEY_CASES.items():
        keys = make_keys(frame)
        result = table.lookup(keys)
        pd.testing.assert_frame_equal(result, expected(frame, keys), obj=case)
        pd.testing.assert_frame_equal(result, memory.lookup(keys), obj=case)


@needs_redis
def test_redis_table_string_keys_host_port_arguments_and_reload(redis_server):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3, 4]}, index=pd.Index(["u1", "u2"], name="user"))
    table = RedisTable(host=redis_server.host, port=redis_server.port, db=1, prefix="strings").load(frame)
    for keys in (["u2", "zz", "u1"], pd.Series(["u1"]), [], [1, "u1"]):
        pd.testing.assert_frame_equal(table.lookup(keys), expected(frame, keys))
    # A reload replaces the table: keys not in the new frame are gone, a new reader sees it.
    smaller = frame.iloc[1:] * 10
    table.load(smaller)
    reader = RedisTable(redis_server.url.replace("/0", "/1"), prefix="strings")
    pd.testing.assert_frame_equal(reader.lookup(["u1", "u2"]), expected(smaller, ["u1", "u2"]))


@needs_redis
def test_redis_table_pickles_parameters_and_reconnects(redis_server):
    frame = make_frame()
    table = RedisTable.from_frame(frame, redis_server.url, prefix="pickled", fallback=MemoryTable(frame))
    table.lookup([1])  # connected
    clone = pickle.loads(pickle.dumps(table))
    assert clone._client is None
    assert (clone.server, clone.prefix, clone.socket_timeout) == (table.server, "pickled", 1.0)
    keys = KEY_CASES["series"](frame)
    pd.testing.assert_frame_equal(clone.lookup(keys), expected(frame, keys))
    # An unpickled table that never saw the schema reads it from the server.
    fresh = pickle.loads(pickle.dumps(RedisTable(redis_server.url, prefix="pickled")))
    pd.testing.assert_frame_equal(fresh.lookup(keys), expected(frame, keys))


@needs_redis
def test_missing_table_and_foreign_rows_raise_table_error(redis_server):
    with pytest.raises(TableError, match=r"No table under prefix 'nothing'.*load\(frame\)"):
        RedisTable(redis_server.url, prefix="nothing").lookup([1])
    table = RedisTable.from_frame(make_frame(), redis_server.url, prefix="foreign")
    table._redis().set("foreign:4", b"short")
    with pytest.raises(TableError, match=r"'foreign:4' .* 5 bytes, not 24"):
        table.lookup([1, 4])
    table._redis().delete("foreign:4")
    table._redis().hset("foreign:4", mapping={"count": "1"})
    assert table.lookup([4]).isna().all(axis=None)  # MGET answers nil for another type: missing
    with pytest.raises(TableError, match=r"answered an error while reading the schema: .*db="):
        RedisTable(redis_server.url.replace("/0", "/99"), prefix="foreign").lookup([1])


@needs_redis
def test_server_stopped_mid_run_raises_a_clear_error(own_server):
    frame = make_frame()
    table = RedisTable.from_frame(frame, own_server.url, prefix="users", batch_size=10)
    keys = pd.Series(np.repeat(frame.index.to_numpy(), 2))
    pd.testing.assert_frame_equal(table.lookup(keys), expected(frame, keys))
    own_server.stop()  # the server goes away between two lookups of a running pipeline
    with pytest.raises(TableUnavailableError) as info:
        table.lookup(keys[6:])
    message = str(info.value)
    assert f"127.0.0.1:{own_server.port}" in message
    assert f"starting at key {frame.index[3]}" in message  # the first key of the failed batch
    assert "prefix 'users'" in message and "fallback=" in message
    assert isinstance(info.value, WillowError) and isinstance(info.value, ConnectionError)


@needs_redis
def test_server_stopped_mid_run_falls_back_when_configured(own_server):
    frame = make_frame()
    table = RedisTable.from_frame(frame, own_server.url, prefix="users", fallback=MemoryTable(frame))
    keys = KEY_CASES["list"](frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback while the server answers
        first = table.lookup(keys)
    own_server.stop()
    with pytest.warns(TableFallbackWarning, match=f"127.0.0.1:{own_server.port}"):
        second = table.lookup(keys)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(second, expected(frame, keys))


@needs_redis
def test_fallback_with_other_columns_is_refused(own_server):
    frame = make_frame()
    table = RedisTable.from_frame(
        frame, own_server.url, prefix="users", fallback=MemoryTable(frame[["count"]])
    )
    own_server.stop()
    with pytest.raises(TableError, match="fallback .* has columns"):
        table.lookup([1])


@needs_redis
def test_server_that_stops_answering_times_out(own_server):
    frame = make_frame()
    table = RedisTable.from_frame(frame, own_server.url, prefix="slow", socket_timeout=0.1)
    table.lookup([1])
    os.kill(own_server.process.pid, signal.SIGSTOP)  # alive, connected, but silent
    try:
        with pytest.raises(TableUnavailableError, match=rf"127.0.0.1:{own_server.port} .*timed out.*key 4"):
            table.lookup([4, 1])
        table.fallback = MemoryTable(frame)
        with pytest.warns(TableFallbackWarning, match="timed out"):
            pd.testing.assert_frame_equal(table.lookup([4, 1]), expected(frame, [4, 1]))
    finally:
        os.kill(own_server.process.pid, signal.SIGCONT)
    table.fallback = None
    pd.testing.assert_frame_equal(table.lookup([4, 1]), expected(frame, [4, 1]))  # reconnects


def test_constructor_checks_its_arguments():
    with pytest.raises(ValueError, match="redis://"):
        RedisTable("http://localhost:6379")
    with pytest.raises(ValueError, match="glob"):
        RedisTable(prefix="a*")
    with pytest.raises(ValueError, match="batch_size"):
        RedisTable(batch_size=0)
    with pytest.raises(TypeError, match="fallback"):
        RedisTable(fallback=pd.DataFrame())
    table = RedisTable("redis://:pw@example.org:6390/3", prefix="p")
    assert (table.server, table.db, table.password) == ("example.org:6390", 3, "pw")


# --------------------------------------------------------------------------- cascades over tables


N_KEYS = 400


def table_data(seed: int = 0):
    """Rows (two cheap columns and a key), labels, and a per-key table whose first column shifts
    each key's decision boundary: rows far from the boundary are easy on the cheap columns alone,
    rows near it need the lookup."""
    n = 1000 + 2400 + 400
    rng = np.random.default_rng(seed)
    cheap = rng.normal(size=(n, 2))
    keys = rng.integers(0, N_KEYS, n)
    remote = pd.DataFrame(
        rng.normal(size=(N_KEYS, 6)), index=pd.Index(np.arange(N_KEYS), name="key"), columns=list("abcdef")
    )
    y = (3.0 * cheap[:, 0] + 1.5 * cheap[:, 1] + 1.5 * remote["a"].to_numpy()[keys] > 0).astype(np.int64)
    remote = remote.drop(index=remote.index[::9])  # unseen keys: NaN features
    rows = pd.DataFrame({"c0": cheap[:, 0], "c1": cheap[:, 1], "key": keys})
    parts = np.split(np.arange(n), [1000, 3400])
    return remote, [(rows.iloc[p].reset_index(drop=True), y[p]) for p in parts]


@needs_redis
def test_cascade_over_a_redis_table_skips_remote_lookups_for_easy_rows(redis_server):
    import redis

    remote, ((train, ty), (calibration, cy), (test, _)) = table_data()
    # Small MGET batches: several round trips per lookup, as a remote store would cost.
    table = RedisTable.from_frame(remote, redis_server.url, prefix="cascade", batch_size=16)
    table_pipelines.REMOTE = table
    table_pipelines.FRAME = remote
    model = LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)
    model.fit(np.hstack([train[["c0", "c1"]], remote.reindex(train["key"])]), ty)
    original = table_pipelines.frame_pipeline  # the same pipeline over the pandas frame
    np.testing.assert_array_equal(table_pipelines.table_pipeline(model, test), original(model, test))

    pipeline = willow.optimize(
        table_pipelines.table_pipeline,
        accuracy_target=0.9,
        confidence=0.9,
        cost_repeats=2,
        importance_repeats=2,
        compile=False,
        # A cheap approximate model, so the plan's gain is the skipped lookups, not timing noise.
        approximate_model=LogisticRegression(),
        # This test checks what the cascade fetches, not whether 600 holdout rows on a loopback
        # server amortise the cascade's per-call overheads (they often do not).
        require_faster=False,
    ).calibrate(model, calibration, y=cy)
    plan = pipeline.plan_
    assert plan.cascade, plan.reason
    assert plan.selected == ("cheap",)
    # The lookup statement is the "remote" group, timed by the cost probes (round trips included).
    lookup = [s for s in pipeline.costs_.statements if "REMOTE.lookup" in s.source]
    assert len(lookup) == 1 and lookup[0].groups == frozenset({"remote"}) and lookup[0].role == "group"
    assert plan.group_seconds_per_row["remote"] == pytest.approx(lookup[0].seconds_per_row)
    assert plan.group_seconds_per_row["remote"] > 0
    assert "REMOTE.lookup" in pipeline.explain()

    # Outputs: exact on full-path rows, the approximate model's own on the others.
    agreement = assert_cascade_equivalent(pipeline, model, test)
    assert agreement >= 0.85
    _, confident = routed_rows(pipeline, (model, test), {})
    assert 0 < confident.sum() < len(test)

    # Only the rows the approximate model was unsure about reach Redis: count the keys it served.
    client = redis.Redis(host=redis_server.host, port=redis_server.port)

    def keys_served() -> int:
        stats = client.info("stats")
        return int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])

    before = keys_served()
    pipeline(model, test)
    served = keys_served() - before - 1  # one read of the table's version key per lookup
    assert served == test["key"][~confident].nunique() < test["key"].nunique()

    # The same plan serves the same outputs when the table is in memory instead.
    from_redis = pipeline(model, test)
    table_pipelines.REMOTE = MemoryTable(remote)
    try:
        np.testing.assert_array_equal(pipeline(model, test), from_redis)
    finally:
        table_pipelines.REMOTE = table


@needs_redis
def test_server_restarted_empty_never_serves_nan_rows(own_server):
    frame = make_frame()
    table = RedisTable.from_frame(frame, own_server.url, prefix="users")
    keys = KEY_CASES["list"](frame)
    first = table.lookup(keys)
    own_server.stop()
    own_server.start()  # the same port, an empty server
    with pytest.raises(TableUnavailableError, match="no longer holds the table under prefix 'users'"):
        table.lookup(keys)
    with pytest.raises(TableUnavailableError, match="no longer holds"):
        table.lookup([])
    table.fallback = MemoryTable(frame)
    with pytest.warns(TableFallbackWarning, match="no longer holds"):
        pd.testing.assert_frame_equal(table.lookup(keys), first)
    # another process reloads the table (other values): the next lookup reads the new version
    RedisTable.from_frame(frame * 2, own_server.url, prefix="users")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(table.lookup(keys), expected(frame * 2, keys))


@needs_redis
def test_a_jump_in_missing_keys_is_refused(redis_server):
    from willow.tables.redis_table import BASELINE_KEYS

    frame = pd.DataFrame({"a": np.arange(2000.0)}, index=pd.RangeIndex(2000, name="user"))
    table = RedisTable.from_frame(frame, redis_server.url, prefix="evicted", fallback=MemoryTable(frame))
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 2100, BASELINE_KEYS * 2)  # ~5% of keys unknown, as at calibration
    pd.testing.assert_frame_equal(table.lookup(calibration), expected(frame, calibration))
    served = rng.integers(0, 2100, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(table.lookup(served), expected(frame, served))
    table._redis().delete(*[f"evicted:{k}" for k in range(1000)])  # half the rows evicted
    with pytest.warns(TableFallbackWarning, match=r"had no row for .* far more than"):
        pd.testing.assert_frame_equal(table.lookup(served), expected(frame, served))
    table.fallback = None
    with pytest.raises(TableUnavailableError, match="far more than"):
        table.lookup(served)
    table.check_misses = False
    assert table.lookup(served).isna().any(axis=None)
