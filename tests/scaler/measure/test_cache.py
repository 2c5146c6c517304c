"""A damaged latency cache entry: moved aside with one warning line, then measured again."""

from __future__ import annotations

import pytest

from scaler.measure import CACHE_ENV, LatencyCache, LatencySettings, measure_latency

SETTINGS = LatencySettings(
    input_hw=(64, 128), warmup=1, min_samples=3, max_samples=8, time_cap_s=2.0, threads=1, max_others_share=None
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))


@pytest.mark.parametrize("damage", ["cut", "not-json", "empty"])
def test_a_damaged_entry_is_moved_aside_and_measured_again(tmp_path, capsys, damage):
    cache = LatencyCache(tmp_path / "cache")
    first = measure_latency("lpsnet_tiny", SETTINGS, cache=cache)
    entry = cache.entry_path(first.cache_key)
    text = entry.read_bytes()
    entry.write_bytes({"cut": text[: len(text) // 2], "not-json": b"\xff\x00garbage", "empty": b""}[damage])
    damaged = entry.read_bytes()
    assert cache.get(first.cache_key) is None
    (aside,) = cache.path.glob(f"{entry.name}.damaged-*")
    assert aside.read_bytes() == damaged and not entry.exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: latency cache entry {entry}") and str(aside) in err[0]
    assert cache.keys() == []
    again = measure_latency("lpsnet_tiny", SETTINGS, cache=cache)
    assert not again.from_cache and cache.keys() == [first.cache_key]
    assert measure_latency("lpsnet_tiny", SETTINGS, cache=cache).from_cache
    assert capsys.readouterr().err == ""


def test_a_foreign_entry_stays_where_it_is(tmp_path, capsys):
    cache = LatencyCache(tmp_path / "cache")
    cache.path.mkdir()
    entry = cache.entry_path("abc")
    entry.write_text('{"format": 999, "key": "abc", "result": {}}')
    assert cache.get("abc") is None and entry.is_file() and capsys.readouterr().err == ""
