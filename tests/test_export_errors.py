"""Bad inputs to sdar-export each give a clear error naming the file / tensor / option and the fix."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file
from sdar_export import cli
from sdar_export.checkpoint import load_checkpoint
from sdar_export.config import SDARConfig
from sdar_export.errors import CheckpointError, ExportError
from sdar_export.make_checkpoint import make_checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", seed=0)


@pytest.fixture
def ck(pristine, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(pristine, d)
    return d


def _main_err(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv] + ["-q"]) == 2
    return capsys.readouterr().err


def test_missing_checkpoint_dir(tmp_path, capsys):
    err = _main_err(capsys, tmp_path / "nope", "-o", tmp_path / "out")
    assert "nope" in err and "not found" in err


def test_missing_config(ck, tmp_path, capsys):
    (ck / "config.json").unlink()
    err = _main_err(capsys, ck, "-o", tmp_path / "out")
    assert "config.json" in err and "not found" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_config_json(ck, tmp_path, capsys):
    (ck / "config.json").write_text('{"model_type": "sdar", "hidden_size": ')
    err = _main_err(capsys, ck, "-o", tmp_path / "out")
    assert "config.json" in err and "corrupt JSON" in err


def test_wrong_model_type_and_missing_field(ck):
    c = json.loads((ck / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model_type 'llama' is not supported"):
        SDARConfig.from_dict({**c, "model_type": "llama"})
    del c["num_hidden_layers"]
    with pytest.raises(CheckpointError, match=r"missing required field\(s\) \['num_hidden_layers'\]"):
        SDARConfig.from_dict(c)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_plain_autoregressive_model_is_refused(ck, tmp_path, capsys, model_type):
    c = json.loads((ck / "config.json").read_text())
    if model_type == "qwen3_moe":
        c.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
    c["model_type"] = model_type
    (ck / "config.json").write_text(json.dumps(c))
    for block_length in ("4", "1"):
        err = _main_err(capsys, ck, "-o", tmp_path / "out", "--block-length", block_length)
        assert f"model_type '{model_type}' is a plain autoregressive model, not an SDAR" in err
        assert "at any --block-length, 1 included" in err and "Export an SDAR checkpoint" in err
        assert not (tmp_path / "out").exists()
    # The loader still reads the network (the tiny task's evaluation decodes its AR model with it).
    assert SDARConfig.from_dict(c).autoregressive
    assert not SDARConfig.from_dict({**c, "model_type": model_type.replace("qwen3", "sdar")}).autoregressive
    if model_type == "qwen3":
        assert load_checkpoint(ck).config.autoregressive


def test_unsupported_rope_scaling(ck):
    c = json.loads((ck / "config.json").read_text())
    c["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (ck / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="rope_scaling type 'yarn' is not supported"):
        load_checkpoint(ck)


def test_missing_tensor(ck, tmp_path, capsys):
    W = load_file(str(ck / "model.safetensors"))
    del W["model.layers.1.self_attn.k_norm.weight"]
    save_file(W, str(ck / "model.safetensors"))
    err = _main_err(capsys, ck, "-o", tmp_path / "out")
    assert "model.layers.1.self_attn.k_norm.weight" in err and "missing" in err
    assert "model.safetensors" in err


def test_wrong_tensor_shape(ck):
    W = load_file(str(ck / "model.safetensors"))
    W["model.layers.0.mlp.up_proj.weight"] = W["model.layers.0.mlp.up_proj.weight"][:100].contiguous()
    save_file(W, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "model.layers.0.mlp.up_proj.weight" in msg and "[100, 128]" in msg and "[256, 128]" in msg
    assert "model.safetensors" in msg


def test_corrupt_weights_file(ck):
    (ck / "model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(ck)


def test_no_weights(ck):
    (ck / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_checkpoint(ck)


def test_missing_shard(tmp_path):
    d = make_checkpoint(tmp_path / "ck", shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: shard listed in"):
        load_checkpoint(d)


def test_tokenizer_without_mask_token(ck, tmp_path, capsys):
    tj = json.loads((ck / "tokenizer.json").read_text())
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["content"] != "<|MASK|>"]
    (ck / "tokenizer.json").write_text(json.dumps(tj))
    err = _main_err(capsys, ck, "-o", tmp_path / "out")
    assert "<|MASK|>" in err and "tokenizer.json" in err


def test_block_length_must_divide_max_context(ck, tmp_path, capsys):
    err = _main_err(capsys, ck, "-o", tmp_path / "out", "--block-length", "8", "--max-context", "100")
    assert "--block-length 8 does not divide --max-context 100" in err
    err = _main_err(capsys, ck, "-o", tmp_path / "out", "--max-context", "4096")
    assert "exceeds the model's max_position_embeddings 1024" in err
    err = _main_err(capsys, ck, "-o", tmp_path / "out", "--max-context", "64", "--prefill-chunk", "6")
    assert "--prefill-chunk 6" in err


def test_existing_output_needs_force(ck, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    err = _main_err(capsys, ck, "-o", out, "--max-context", "16")
    assert "already exists" in err and "--force" in err
    assert (out / "keep.txt").exists()


def test_trt_requested_without_tensorrt(ck, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(ExportError, match="pip install tensorrt") as e:
        cli.export(ck, tmp_path / "out", engine="trt", max_context=16, quiet=True)
    assert "JetPack" in str(e.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the options object


def test_options_are_checked_when_built_before_anything_is_read(tmp_path):
    """ExportOptions refuses bad values and combinations itself (no checkpoint needed), naming the
    option and the fix; the command line builds the very same object."""
    from sdar_export.options import ExportOptions

    missing = tmp_path / "no-such-checkpoint"
    cases = [({"engine": "tensorrt"}, "--engine must be 'onnx' or 'trt'"),
             ({"dtype": "int8"}, "dtype must be float32, float16 or bfloat16"),
             ({"group_size": 64}, "only apply to a quantized export; add --int4 or --int8"),
             ({"symmetric": False}, "only apply to a quantized export"),
             ({"quantize": "int4", "calibration": tmp_path / "c.txt"}, "--calibration only applies"),
             ({"quantize": "int4", "group_size": 48}, "--group-size 48 must be a power of two"),
             ({"quantize": "int4", "dtype": "bf16"}, "drop --bf16"),
             ({"block_length": 0}, "--block-length must be positive"),
             ({"batch": -1}, "--batch must be positive"),
             ({"opset": 16}, "--opset 16 is too old")]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message.replace("(", r"\(")):
            ExportOptions(model_dir=missing, **kwargs)
    opts = ExportOptions(model_dir=missing, dtype="fp16", quantize="int4")
    assert opts.dtype == "float16" and opts.compute_dtype == "float16" and opts.scheme().bits == 4
    assert opts.output_dir() == tmp_path / "no-such-checkpoint-sdar_rt-fp16-int4"
    argv = [str(missing), "--fp16", "--int4", "--group-size", "64", "--skip-validate"]
    assert cli.options_from_args(cli.parser().parse_args(argv)) == ExportOptions(
        model_dir=missing, dtype="float16", quantize="int4", group_size=64, validate=False)


def test_options_defaults_follow_the_config(pristine):
    from sdar_export.options import ExportOptions

    cfg = SDARConfig.from_file(pristine)
    opts = ExportOptions(model_dir=pristine, block_length=8).for_config(cfg)
    assert (opts.max_context, opts.prefill_chunk) == (1024, 256)   # min(4096, max_position_embeddings)
    small = ExportOptions(model_dir=pristine, max_context=24).for_config(cfg)
    assert small.prefill_chunk == 24
