"""The artifact cache's key follows the checkpoint's contents, not its files' times, and writing a new
artifact of a checkpoint removes the ones it supersedes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sdar_fixtures import PACKAGED_CHECKPOINT
from sdar_rt import artifact_cache
from sdar_rt.artifact_cache import ExportOptions, artifact_path, checkpoint_name


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy)  # plain copy: new file times, like a reinstall
    return dst


def test_key_ignores_file_times_and_follows_contents(tmp_path):
    ck = _copy(PACKAGED_CHECKPOINT, tmp_path / "a" / "tiny")
    first = artifact_path(ck, ExportOptions())
    assert first.name.startswith("tiny-")
    for p in ck.iterdir():  # a reinstall: every file rewritten with the same bytes, later times
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**10))
    assert artifact_path(ck, ExportOptions()) == first
    # the same checkpoint installed elsewhere is the same artifact
    assert artifact_path(_copy(ck, tmp_path / "b" / "tiny"), ExportOptions()) == first

    weights = ck / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight, same size and inode
    weights.write_bytes(bytes(data))
    # a rewrite moves the time stamp (here by 1 ns only): the memo of digests hashes the file again
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert artifact_path(ck, ExportOptions()) != first

    tok = ck / "tokenizer_config.json"  # copied into the artifact: part of the key too
    before = artifact_path(ck, ExportOptions())
    tok.write_text(tok.read_text().replace('"model_max_length": 512', '"model_max_length": 256'))
    assert artifact_path(ck, ExportOptions()) != before
    assert artifact_path(ck, ExportOptions(dtype="float16")) != artifact_path(ck, ExportOptions())


def test_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    ck = _copy(PACKAGED_CHECKPOINT, tmp_path / "tiny")
    artifact_path(ck, ExportOptions())
    memo = json.loads((tmp_path / "cache" / "sdar_rt" / "file-digests.json").read_text())
    assert [Path(k).name for k in memo] == ["model.safetensors"]
    opened = []
    real_open = open

    def counting_open(file, *a, **kw):
        opened.append(Path(file).name)
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", counting_open)
    artifact_path(ck, ExportOptions())
    assert "model.safetensors" not in opened


def test_hub_snapshot_is_named_by_its_repository_and_keyed_by_its_blob_digests(tmp_path):
    repo = tmp_path / "hub" / "models--JetLM--SDAR-1.7B-Chat"
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for p in PACKAGED_CHECKPOINT.iterdir():
        blob = repo / "blobs" / (("e" * 64) if p.suffix == ".safetensors" else p.name + "-blob")
        shutil.copy(p, blob)
        (snap / p.name).symlink_to(blob)
    assert checkpoint_name(snap) == "SDAR-1.7B-Chat"
    assert artifact_cache.checkpoint_source(snap) == "hub:JetLM/SDAR-1.7B-Chat"
    art = artifact_path(snap, ExportOptions())
    assert art.name.startswith("SDAR-1.7B-Chat-")
    # the blob's name is its digest: no weight file read, nothing remembered
    assert not (tmp_path / "cache" / "sdar_rt" / "file-digests.json").exists()


def test_a_new_export_removes_the_artifact_it_supersedes(tmp_path):
    pytest.importorskip("torch")
    from sdar_export.make_checkpoint import make_checkpoint

    ck, other = tmp_path / "ck", tmp_path / "other" / "ck"
    make_checkpoint(ck, preset="tiny", seed=0, moe=False)
    make_checkpoint(other, preset="tiny", seed=2, moe=False)  # another checkpoint: its entry stays
    options = ExportOptions(max_context=32)
    kept = artifact_cache.export_cached(other, options)
    old = artifact_cache.export_cached(ck, options)
    old_fp16 = artifact_cache.export_cached(ck, ExportOptions(dtype="float16", max_context=32))
    assert len({kept, old, old_fp16}) == 3

    shutil.rmtree(ck)
    make_checkpoint(ck, preset="tiny", seed=1, moe=False)  # new weights in the same place
    new = artifact_cache.export_cached(ck, options)
    assert new != old and (new / "manifest.json").is_file()
    assert not old.exists() and not Path(f"{old}.source.json").exists()
    assert old_fp16.is_dir() and kept.is_dir()  # other options, other checkpoint: not superseded
    assert sorted(p.name for p in new.parent.iterdir()) == sorted(
        n for a in (kept, new, old_fp16) for n in (a.name, f"{a.name}.source.json"))


def test_an_artifact_shared_by_two_copies_stays_while_one_still_uses_it(tmp_path):
    ck = _copy(PACKAGED_CHECKPOINT, tmp_path / "a" / "tiny")
    copy = _copy(PACKAGED_CHECKPOINT, tmp_path / "b" / "tiny")
    shared = artifact_path(ck, ExportOptions())
    assert artifact_path(copy, ExportOptions()) == shared
    shared.mkdir(parents=True)  # what export_cached writes, for both sources
    tag = artifact_cache._options_tag(ExportOptions())
    artifact_cache.remove_superseded(shared, artifact_cache.checkpoint_source(ck), tag)
    artifact_cache.remove_superseded(shared, artifact_cache.checkpoint_source(copy), tag)
    newer = shared.with_name(shared.name + "-newer")
    newer.mkdir()
    assert artifact_cache.remove_superseded(newer, artifact_cache.checkpoint_source(ck), tag) == []
    assert shared.is_dir()  # the copy still uses it
    assert artifact_cache.remove_superseded(newer, artifact_cache.checkpoint_source(copy), tag) == [shared]
    assert not shared.exists()


def test_the_trained_block_length_comes_from_config_json(tmp_path):
    from sdar_rt.artifact_cache import DEFAULT_BLOCK_LENGTH, trained_block_length

    ck = tmp_path / "ck"
    ck.mkdir()
    for value, expected in ((16, 16), (8, 8), (None, DEFAULT_BLOCK_LENGTH), ("16", DEFAULT_BLOCK_LENGTH),
                            (0, DEFAULT_BLOCK_LENGTH), (True, DEFAULT_BLOCK_LENGTH)):
        cfg = {"model_type": "sdar"} if value is None else {"model_type": "sdar", "block_size": value}
        (ck / "config.json").write_text(json.dumps(cfg))
        assert trained_block_length(ck) == expected, value
    assert trained_block_length(tmp_path / "missing") == DEFAULT_BLOCK_LENGTH
    assert trained_block_length(PACKAGED_CHECKPOINT) == 4

    # sdar-export's --block-length defaults to it too; a given one wins
    from sdar_export.cli import options_from_args, parser

    (ck / "config.json").write_text(json.dumps({"model_type": "sdar", "block_size": 16}))
    assert options_from_args(parser().parse_args([str(ck)])).block_length == 16
    assert options_from_args(parser().parse_args([str(ck), "--block-length", "4"])).block_length == 4
